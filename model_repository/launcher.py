"""Start and stop the real Triton Inference Server binary on a model repository.

The binary is Triton 2.51 from the ``nvidia-pytriton`` wheel; we run it directly and
never go through PyTriton's Python API. Three traps of that wheel are handled here:

* the python backend needs the stub built for *our* Python next to
  ``libtriton_python.so``, so the backends folder is copied somewhere writable;
* the stub needs the wheel's bundled libraries and our ``libpython`` on
  ``LD_LIBRARY_PATH``;
* the stub embeds its own interpreter and starts it with ``-E`` semantics
  (``sys.flags.ignore_environment == 1``), so ``PYTHONPATH`` is ignored. It finds
  its interpreter by searching ``python3`` on ``PATH``; with the system Python first
  it imports the system site-packages (numpy 2, whose ABI the stub was not built
  for: BYTES tensors arrive corrupted). Putting this environment's ``bin/`` first
  on ``PATH`` makes ``sys.executable`` the venv's python, whose ``pyvenv.cfg``
  selects the venv's site-packages. ``tests/test_server_env.py`` proves both sides.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import supervisor
from .runtime import admission
from .runtime.files import ARTIFACTS_MANIFEST, ArtifactMismatch, verify_artifacts
from .runtime.rendered import Rendered
from .runtime.index import IndexMismatch, verify_index_files

LOOPBACK = "127.0.0.1"


# What a GPU-less machine always logs; not the reason a server failed.
_CUDA_NOISE = re.compile(r"CUDA driver version is insufficient|CudaDriverHelper has not been initialized")


MIB = 1 << 20


def cuda_pool_bytes(max_batch_size: int, max_tokens: int, dim: int, in_flight: int = 4) -> int:
    """Triton's CUDA memory pool for the tensors passed between GPU models (64 MiB by default).

    The largest is last_hidden_state, float32 (B, T, D); with it input_ids and attention_mask
    (int64) and the embedding. ``in_flight`` batches of each may sit between steps. A pool
    that is too small makes Triton move them through pinned host memory instead."""
    per_batch = max_batch_size * max_tokens * (dim * 4 + 2 * 8) + max_batch_size * dim * 4
    return max(64 * MIB, -(-in_flight * per_batch // (64 * MIB)) * 64 * MIB)


DEFAULT_CUDA_POOL_BYTES = cuda_pool_bytes(128, 256, 384)  # the default repository: all-MiniLM-L6-v2, 128 rows x 256 tokens


def policy_flags(model_control: str = "explicit", cuda_pools: dict[int, int] | None = None) -> list[str]:
    """How every deployment runs tritonserver: this launcher, deploy/Dockerfile (checked by a test) and the
    k8s manifests (rendered from this list). Explicit model control lets ``python -m build deploy-index`` and
    ``rollback`` switch index versions live; strict readiness is 200 only when every model is ready.
    ``cuda_pools``: GPU id -> bytes of its CUDA memory pool (GPU repositories; see ``cuda_pool_bytes``)."""
    control = ["--model-control-mode=explicit", "--load-model=*"] if model_control == "explicit" else []
    pools = [f"--cuda-memory-pool-byte-size={gpu}:{size}" for gpu, size in sorted((cuda_pools or {}).items())]
    return [*control, "--strict-readiness=true", "--exit-on-error=true", "--allow-metrics=true",
            "--metrics-config=summary_latencies=true", *pools]


def repository_cuda_pools(repository: Path) -> dict[int, int]:
    """GPU id -> pool bytes for a rendered GPU repository (from its render.json); none for a CPU one."""
    rendered = Rendered.read_if_rendered(repository)
    if rendered is None or rendered.context.target != "gpu":
        return {}
    c = rendered.context
    size = cuda_pool_bytes(c.max_batch_size, c.max_tokens, c.dim)
    return {gpu: size for gpu in range(max(1, c.shard_count))}


class ServerStartError(RuntimeError):
    """tritonserver exited or did not become ready in time."""


def verify_repository(repository: Path) -> int:
    """Check every file of every model version against its sha256 manifest before the server starts;
    -> the number of files checked. Each python model checks its own files again whenever it loads (a
    reload, a deploy); this pass also covers what no python code loads (a TensorRT plan)."""
    checked = 0
    try:
        for manifest in sorted(Path(repository).glob(f"*/[0-9]*/{ARTIFACTS_MANIFEST}")):
            checked += len(verify_artifacts(manifest.parent))
        for index in sorted(Path(repository).glob("*/[0-9]*/index")):
            checked += len(verify_index_files(index))
    except (ArtifactMismatch, IndexMismatch) as e:
        raise ServerStartError(f"refusing to start on a repository whose files changed since they were rendered: {e}") from None
    return checked


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError(
            "nvidia-pytriton is not installed in this environment "
            f"({sys.prefix}); run `make setup` first"
        )
    return Path(spec.submodule_search_locations[0])


def tritonserver_binary() -> Path:
    binary = pytriton_root() / "tritonserver" / "bin" / "tritonserver"
    if not binary.exists():
        raise ServerStartError(f"tritonserver binary missing at {binary}")
    return binary


def prepare_backends(workdir: Path) -> Path:
    """Copy the wheel's backends/ to ``workdir`` and add the stub for this Python."""
    root = pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerStartError(f"no python-backend stub for Python {version} at {stub}")
    backends = workdir / "backends"
    marker = backends / "python" / f".stub-{version}"
    if not marker.exists():
        shutil.rmtree(backends, ignore_errors=True)
        shutil.copytree(root / "backends", backends)
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
        marker.touch()
    return backends


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver whose python stub imports from this venv."""
    env = dict(os.environ if base is None else base)
    libs = [str(pytriton_root().parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    # The stub ignores PYTHON* variables; it resolves `python3` through PATH.
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
    # Models must never reach for a hub at run time.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


@dataclasses.dataclass
class ServerConfig:
    model_repository: Path
    workdir: Path
    host: str = LOOPBACK
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    log_verbose: int = 0
    ready_timeout_s: float = 120.0
    # explicit: every model loads at start, and `python -m build deploy-index` / `rollback`
    # switch index versions over gRPC without a restart; none: Triton's default (no switching).
    model_control: str = "explicit"
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] | None = None  # None: server_env(); tests pass a broken one on purpose
    # Off loopback the server must be asked for explicitly, and its model control restricted.
    allow_public_bind: bool = False
    # gRPC over TLS: PEM files of the server's certificate and key (clients verify it with its root).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Load, unload and the repository index (gRPC model-repository, HTTP model-repository) and
    # shared-memory registration need the header ADMIN_HEADER with this value; inference,
    # health and metadata do not. Required whenever the server is not on loopback.
    admin_key: str | None = None
    # Reload a model whose python-backend stub died; stop the server when that fails (supervisor.py).
    supervise: bool = True
    supervisor_metrics_port: int | None = None  # its /metrics (sn_stub_instances, sn_stub_events_total) on host:port
    # Pin the server and every backend stub it starts to these CPUs (None: all), e.g. to keep a
    # load generator on the others; the stubs inherit the affinity.
    cpus: tuple[int, ...] | None = None


ADMIN_HEADER = supervisor.ADMIN_HEADER  # "sn-admin-key"; HTTP clients send it as is
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"  # Triton's gRPC front end expects this prefix
restriction_flags = supervisor.restriction_flags  # the one format, shared with the image's entrypoint


def check_exposure(config: ServerConfig) -> None:
    """Refuse a bind beyond loopback unless asked for, and unrestricted model control there."""
    if is_loopback(config.host):
        return
    if not config.allow_public_bind:
        raise ServerStartError(f"host {config.host!r} is not a loopback address: every port (gRPC inference, HTTP, "
                               "metrics) would be reachable from the network; pass --allow-public-bind to mean it")
    if not config.admin_key:
        raise ServerStartError(f"host {config.host!r} is not on loopback: model control (load, unload) would be open to "
                               "anyone who reaches the port; pass --admin-key (or SN_ADMIN_KEY) to restrict it")


def is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def security_flags(config: ServerConfig) -> list[str]:
    flags = []
    if config.tls_cert or config.tls_key:
        if not (config.tls_cert and config.tls_key):
            raise ServerStartError("TLS needs both --tls-cert and --tls-key")
        flags += ["--grpc-use-ssl=true", f"--grpc-server-cert={config.tls_cert}", f"--grpc-server-key={config.tls_key}"]
    if config.admin_key:
        flags += restriction_flags(config.admin_key)
    return flags


class TritonServer:
    """A tritonserver child process; use as a context manager or call start()/stop()."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.process: subprocess.Popen | None = None
        self.supervisor: supervisor.StubSupervisor | None = None
        self._metrics_server = None
        self.log_path = config.workdir / f"tritonserver-{config.grpc_port}.log"
        self.shm_tag = f"{os.getpid()}-{config.grpc_port}"  # names this server's python-backend regions (supervisor.region_flag)

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.config.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.config.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self.config.metrics_port}/metrics"

    def command(self, backends: Path) -> list[str]:
        c = self.config
        return [
            str(tritonserver_binary()),
            f"--model-repository={c.model_repository}",
            f"--backend-directory={backends}",
            f"--grpc-address={c.host}",
            f"--http-address={c.host}",
            f"--grpc-port={c.grpc_port}",
            f"--http-port={c.http_port}",
            f"--metrics-address={c.host}",
            f"--metrics-port={c.metrics_port}",
            f"--log-verbose={c.log_verbose}",
            *policy_flags(c.model_control, repository_cuda_pools(c.model_repository)),
            *security_flags(c),
            supervisor.region_flag(self.shm_tag),
            *c.extra_args,
        ]

    def start(self) -> "TritonServer":
        c = self.config
        check_exposure(c)
        if not (c.model_repository / ".").is_dir():
            raise ServerStartError(f"model repository {c.model_repository} does not exist; run `python -m build all`")
        verify_repository(c.model_repository)
        c.workdir.mkdir(parents=True, exist_ok=True)
        swept = supervisor.sweep_shm()
        if swept:
            print(f"launcher: removed {len(swept)} shared-memory files that servers which died left behind: {', '.join(swept)}",
                  file=sys.stderr)
        cmd = self.command(prepare_backends(c.workdir))
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=c.env if c.env is not None else server_env(), start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, c.cpus)) if c.cpus else None,
        )
        log.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        if c.supervise:
            self.supervisor = supervisor.StubSupervisor(self.process, supervisor.Repository(self.http_url, c.admin_key))
            self.supervisor.start()
            if c.supervisor_metrics_port:
                self._metrics_server = self.supervisor.serve_metrics(c.host, c.supervisor_metrics_port)
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        """The server's error lines (E... severity), or the last lines of its log when there are none."""
        try:
            log = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        errors = [line for line in log if re.match(r"^E\d{4} ", line) and not _CUDA_NOISE.search(line)]
        return "\n".join((errors or log)[-lines:])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(
                    f"tritonserver exited with code {code} before it was ready; log {self.log_path}:\n{self.log_tail()}"
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        raise ServerStartError(
            f"tritonserver was not ready within {self.config.ready_timeout_s:.0f} s; log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor.join()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()
                self._metrics_server = None
        p = self.process
        if p is None:
            return
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)  # tritonserver drains in-flight requests on SIGINT
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        admission.table_path(p.pid).unlink(missing_ok=True)  # its stubs' admission table, now unused
        for region in supervisor.regions(self.shm_tag):  # freed once nothing maps them
            region.unlink(missing_ok=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
