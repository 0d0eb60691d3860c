"""Bring back a python-backend stub that died, or take the server down so that it gets restarted.

Triton 2.51's python backend never restarts a stub that dies (SIGKILL, the OOM killer, a segfault
in a native library). Every later request to that model fails with ``Stub process '<instance>' is
not healthy`` while ``/v2/health/live``, ``/v2/health/ready`` and the model's own ready endpoint
all keep answering 200: an orchestrator's probes never notice, and the outage is silent and
permanent (``tests/test_faults.py`` shows it with the supervisor off).

The supervisor watches the server's child processes. Triton reaps a stub only when it unloads the
stub's model, so a stub that exited on its own stays a zombie child. When an instance has no
living stub for ``grace_s`` and its model is still READY, the supervisor reloads that model
through the repository API with a config override that differs in one parameter
(``RESTART_PARAMETER``): an unchanged config would be a no-op, a changed one makes Triton build
fresh instances, swap them in and unload the dead ones (about 2 s for the default index).
When ``max_attempts`` reloads in a row fail, it stops the server (SIGTERM, then SIGKILL): liveness
fails and the orchestrator restarts the pod, instead of routing traffic to a server that answers
only errors.

A server killed outright cannot unlink its python-backend shared memory or its stubs' admission table;
``sweep_shm`` removes such leftovers when a server starts (here in ``main``, and in the launcher).
Servers we start name their regions after themselves (``region_flag``) so that nothing another
server uses is touched.

Run as the image's entrypoint (``main``), it also keeps model control closed unless asked: a tritonserver
command with no restricted protocol of its own gets model control and shared-memory registration put
behind the admin header, with ``SN_ADMIN_KEY``'s key where one is given and otherwise with a random key
only the supervisor holds (it still reloads dead stubs; no client can load or unload).

Standard library only: the serving image runs it as ``python3 supervisor.py [options] -- tritonserver ...``
(deploy/Dockerfile, the k8s manifests); ``python -m model_repository serve`` runs it as a thread.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import fcntl
import http.server
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

STUB = "triton_python_backend_stub"
RESTART_PARAMETER = "sn_supervisor_restart"  # the one config field a restart changes
ADMIN_HEADER = "sn-admin-key"  # the launcher's; a restricted repository API needs it
RESTRICTED = "model-repository,shared-memory"  # the protocols behind the admin header
IMAGE_PATH = "/opt/scalingnote/supervisor.py"  # where deploy/Dockerfile puts this file
# What the image and the k8s manifests put before tritonserver; in a pod, /metrics (port 8003) is scraped from outside.
IMAGE_COMMAND = ["python3", IMAGE_PATH, "--metrics-address=0.0.0.0", "--"]


@dataclasses.dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    instance: str
    version: str = ""  # the version folder its model.py runs from


@dataclasses.dataclass(frozen=True)
class Event:
    """What the supervisor did, for logs and tests: kind is crashed, restarted, failed or gave_up."""
    at: float  # time.monotonic()
    kind: str
    model: str
    detail: str = ""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1])


def living_stubs(server_pid: int) -> dict[int, Stub]:
    """The server's stub children that are running (not zombies), by pid."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        if stat is None or stat[1] != server_pid or stat[0] in ("Z", "X"):
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        # stub  MODEL_DIR/VERSION/model.py  shm-region  shm-size  shm-growth  parent-pid  backend-dir  ipc  INSTANCE  ...
        if len(args) > 8 and Path(args[0]).name == STUB:
            model = Path(args[1]).parent.parent.name
            if args[8] != model:  # named after the model itself: the short-lived stub a load runs its config through
                stubs[pid] = Stub(pid, model, args[8], Path(args[1]).parent.name)
    return stubs


class Repository:
    """The few HTTP calls the supervisor makes to tritonserver."""

    def __init__(self, http_url: str, admin_key: str | None = None, timeout_s: float = 120.0):
        self.url = http_url.rstrip("/")
        self.headers = {"Content-Type": "application/json", **({ADMIN_HEADER: admin_key} if admin_key else {})}
        self.timeout_s = timeout_s

    def _call(self, path: str, body: dict | None = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=self.headers, method="GET" if body is None else "POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return response.read()

    def states(self) -> dict[tuple[str, str], str]:
        """(model, version) -> Triton's state of it (READY, LOADING, UNLOADING, UNAVAILABLE)."""
        return {(m["name"], str(m.get("version", ""))): m.get("state", "") for m in json.loads(self._call("/v2/repository/index", {}))}

    def reload(self, model: str, generation: int) -> None:
        """Rebuild every instance of ``model`` from the config it serves with now."""
        config = json.loads(self._call(f"/v2/models/{model}/config"))
        config.setdefault("parameters", {})[RESTART_PARAMETER] = {"string_value": str(generation)}
        self._call(f"/v2/repository/models/{model}/load", {"parameters": {"config": json.dumps(config)}})


TABLE_PREFIX = "scalingnote-admission-"


def _table_root() -> Path:
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def admission_table(server_pid: int) -> Path:
    """runtime/admission.py's ``table_path``, restated in the standard library (tests/test_admission.py keeps them equal)."""
    return _table_root() / f"{TABLE_PREFIX}{server_pid}"


REGION_PREFIX = "scalingnote-py-"  # the python backend's shared-memory regions of the servers we start: this + tag + "-" + uuid
STALE_AFTER_S = 5.0  # a region is mapped within microseconds of its creation; older and mapped by nobody: garbage


def regions(tag: str = "", shm_root: Path = Path("/dev/shm")) -> list[Path]:
    """Our python-backend regions: ``tag``'s server's, or every server's."""
    return sorted(shm_root.glob(f"{REGION_PREFIX}{tag + '-' if tag else ''}*"))


def region_flag(tag: str) -> str:
    """The tritonserver flag that names a server's python-backend regions after ``tag`` (its own, so that
    what it leaves behind can be told apart from another server's)."""
    return f"--backend-config=python,shm-region-prefix-name={REGION_PREFIX}{tag}-"


def _mapped_shm() -> set[str]:
    """Names of the /dev/shm files that some living process maps."""
    names = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            with open(entry / "maps", encoding="utf-8", errors="replace") as maps:
                names.update(line.split("/dev/shm/", 1)[1].split(" (deleted)")[0].strip() for line in maps if "/dev/shm/" in line)
        except OSError:
            continue
    return names


def _is_server(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "tritonserver"
    except OSError:
        return False


def sweep_shm(tag: str = "", stale_after_s: float = STALE_AFTER_S, shm_root: Path = Path("/dev/shm"),
              table_root: Path | None = None) -> list[str]:
    """Remove what servers that died without cleaning up (SIGKILL, the OOM killer) left in shared memory,
    where it would stay until the machine reboots and fill a container's 64 MiB /dev/shm, after which no
    stub can start: our python-backend regions (``REGION_PREFIX``, only ``tag``'s when given) that no
    living process maps and that are older than ``stale_after_s``, and the admission tables of pids that
    are no living tritonserver. A living server maps every region it has. -> the names removed."""
    removed = []
    ours = regions(tag, shm_root)
    mapped = _mapped_shm() if ours else set()  # reads every process's maps: only when there is something to judge
    now = time.time()
    for path in ours:
        try:
            if path.name not in mapped and now - path.stat().st_mtime > stale_after_s:
                path.unlink()
                removed.append(path.name)
        except FileNotFoundError:
            continue
    for path in sorted((table_root or _table_root()).glob(f"{TABLE_PREFIX}*")):
        pid = path.name.removeprefix(TABLE_PREFIX)
        if pid.isdigit() and not _is_server(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def clear_admission(server_pid: int) -> None:
    """Once a reload has swapped the new instances in, forget every admission ticket (runtime.admission:
    ``reset``, which zeroes every slot after the one-word header, under the table's lock). The new stub
    cleared the table at its load, but that comes before the swap: until then requests were admitted,
    sent to the dead stub and failed there, and such a request never reaches the step that gives its
    ticket back. Those tickets would refuse every request for the tickets' ttl (5 s)."""
    try:
        fd = os.open(admission_table(server_pid), os.O_RDWR)
    except FileNotFoundError:  # admission off, or no stub has opened it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, bytes(max(0, os.fstat(fd).st_size - 8)), 8)  # the stubs' maps see it: one page cache
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class StubSupervisor(threading.Thread):
    """Watches ``server``'s stubs every ``interval_s`` until stop() or the server exits."""

    def __init__(self, server: subprocess.Popen, repository: Repository, *, interval_s: float = 0.25,
                 grace_s: float = 0.5, max_attempts: int = 3, stuck_s: float = 10.0, log=print):
        super().__init__(name="stub-supervisor", daemon=True)
        self.server, self.repository = server, repository
        self.interval_s, self.grace_s, self.max_attempts, self.stuck_s = interval_s, grace_s, max_attempts, stuck_s
        self.log = log
        self.events: list[Event] = []
        self._known: dict[str, str] = {}  # instance -> model, for every instance ever seen alive
        self._missing_since: dict[str, float] = {}  # instance -> when it was first seen without a stub
        # Every stub seen alive, by pid. One that turns into a zombie child of the server died on its own (Triton
        # reaps a stub only when it unloads it): that catches a dead stub of a version being retired, whose
        # instance name a new version's stub already carries (a stub killed during an index deploy's load).
        self._stubs: dict[int, Stub] = {}
        self._dead_since: dict[int, float] = {}  # pid -> when it was first seen dead, not yet reaped
        self._reloaded_for: set[int] = set()  # dead stubs a reload was already made for
        self._generation = 0
        self._failures: dict[str, int] = {}
        self._next_try: dict[str, float] = {}  # model -> not before (backoff after a failed reload)
        self._halt = threading.Event()
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()  # (model, event kind) -> times
        # Seen now, while the server is ready: a stub that dies before the first check still counts.
        seen = living_stubs(server.pid)
        self._stubs.update(seen)
        self._known.update({stub.instance: stub.model for stub in seen.values()})
        self.instances: dict[str, int] = dict(collections.Counter(self._known.values()))  # model -> living stubs

    def stop(self) -> None:
        self._halt.set()

    def _event(self, kind: str, model: str, detail: str = "") -> None:
        self.events.append(Event(time.monotonic(), kind, model, detail))
        self.counts[(model, kind)] += 1
        self.log(f"supervisor: {kind} {model}{': ' + detail if detail else ''}", flush=True)

    def run(self) -> None:
        while not self._halt.wait(self.interval_s) and self.server.poll() is None:
            try:
                self.check()
            except Exception as e:  # a probe that failed once must not end the supervision
                self.log(f"supervisor: check failed: {e!r}", flush=True)

    def _dead_stubs(self, living: dict[int, Stub], now: float) -> dict[str, dict[str, str]]:
        """model -> {instance: what was seen} for the stubs of it that died on their own over ``grace_s`` ago
        and no reload was made for."""
        self._stubs.update(living)
        lost: dict[str, dict[str, str]] = {}
        for pid, stub in list(self._stubs.items()):
            if pid in living:
                continue
            stat = _stat(pid)
            if stat is None or stat[1] != self.server.pid or stat[0] != "Z":  # reaped: unloaded by Triton
                self._stubs.pop(pid)
                self._dead_since.pop(pid, None)
                self._reloaded_for.discard(pid)
                continue
            if now - self._dead_since.setdefault(pid, now) >= self.grace_s and pid not in self._reloaded_for:
                lost.setdefault(stub.model, {})[stub.instance] = f"{stub.instance} (pid {pid}, dead)"
        return lost

    def check(self) -> None:
        living = living_stubs(self.server.pid)
        now = time.monotonic()
        dead = self._dead_stubs(living, now)
        alive = {stub.instance: stub.model for stub in living.values()}
        self._known.update(alive)
        self.instances = dict(collections.Counter(alive.values()))
        for instance in list(self._missing_since):
            if instance in alive:
                del self._missing_since[instance]
        lost = dead  # model -> {instance: what was seen}
        for instance, model in self._known.items():
            if instance not in alive:
                since = self._missing_since.setdefault(instance, now)
                if now - since >= self.grace_s:
                    lost.setdefault(model, {}).setdefault(instance, instance)
        if not lost and not self._dead_since:
            return
        states = self.repository.states()
        if self._stuck(states, now):
            return
        ready = {m for (m, _), state in states.items() if state == "READY"}
        for model, instances in lost.items():
            if any(m == model and state == "LOADING" for (m, _), state in states.items()):
                continue  # a load is on (an index deploy): the config it serves is about to change; look again after
            if model not in ready:  # unloaded on purpose: its instances are gone for good
                for instance in instances:
                    self._known.pop(instance, None)
                    self._missing_since.pop(instance, None)
                continue
            if now >= self._next_try.get(model, 0.0):
                self._restart(model, instances)

    def _stuck(self, states: dict[tuple[str, str], str], now: float) -> bool:
        """A version whose stub died with requests in flight never finishes unloading (Triton 2.51 never
        completes those requests; strict readiness stays false for good): once one has been UNLOADING for
        ``stuck_s``, stop the server, so that it is restarted with the version its config pins."""
        for pid, since in self._dead_since.items():
            stub = self._stubs.get(pid)
            if stub and states.get((stub.model, stub.version)) == "UNLOADING" and now - since >= self.stuck_s:
                self._event("gave_up", stub.model, f"version {stub.version} cannot finish unloading: its stub (pid {pid}) died "
                            "with requests in flight; stopping the server so that it restarts with the version its config pins")
                terminate(self.server)
                return True
        return False

    def _restart(self, model: str, instances: dict[str, str]) -> None:
        self._event("crashed", model, f"no living stub for {', '.join(sorted(instances.values()))}")
        self._generation += 1
        try:
            self.repository.reload(model, self._generation)
        except (urllib.error.URLError, OSError, ValueError) as e:
            detail = e.read().decode(errors="replace") if isinstance(e, urllib.error.HTTPError) else repr(e)
            self._failures[model] = self._failures.get(model, 0) + 1
            self._event("failed", model, f"reload {self._failures[model]}/{self.max_attempts}: {detail}")
            self._next_try[model] = time.monotonic() + self.grace_s * 2 ** self._failures[model]
            if self._failures[model] >= self.max_attempts:
                self._event("gave_up", model, "stopping the server so that liveness fails and it is restarted")
                terminate(self.server)
            return
        self._failures.pop(model, None)
        self._next_try.pop(model, None)
        for instance in instances:  # the new stubs bring their names back on the next check
            self._known.pop(instance, None)
            self._missing_since.pop(instance, None)
        self._reloaded_for |= {pid for pid, stub in self._stubs.items() if stub.model == model and pid in self._dead_since}
        clear_admission(self.server.pid)
        self._event("restarted", model)


    def metrics(self) -> str:
        """Prometheus text: the instances Triton 2.51 does not export, and what the supervisor did."""
        lines = ["# HELP sn_stub_instances Living python-backend stubs (model instances) per model.",
                 "# TYPE sn_stub_instances gauge"]
        lines += [f'sn_stub_instances{{model="{m}"}} {n}' for m, n in sorted(self.instances.items())]
        lines += ["# HELP sn_stub_events_total Stub crashes seen, reloads that restarted or failed, and give-ups.",
                  "# TYPE sn_stub_events_total counter"]
        models = sorted({m for m in self._known.values()} | {m for m, _ in self.counts})
        lines += [f'sn_stub_events_total{{model="{m}",event="{k}"}} {self.counts[(m, k)]}'
                  for m in models for k in ("crashed", "restarted", "failed", "gave_up")]
        return "\n".join(lines) + "\n"

    def serve_metrics(self, host: str, port: int) -> http.server.ThreadingHTTPServer:
        """GET /metrics on host:port, from a daemon thread; -> the server (shutdown() stops it)."""
        supervisor = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                body = supervisor.metrics().encode() if self.path == "/metrics" else b"not found\n"
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, name="supervisor-metrics", daemon=True).start()
        return server


def restriction_flags(admin_key: str) -> list[str]:
    """Model control and shared-memory registration behind the admin header, on gRPC and HTTP."""
    return [f"--grpc-restricted-protocol={RESTRICTED}:{ADMIN_HEADER}={admin_key}",
            f"--http-restricted-api={RESTRICTED}:{ADMIN_HEADER}={admin_key}"]


def closed_model_control(command: list[str], admin_key: str | None) -> tuple[list[str], str | None, str]:
    """The image's rule: a tritonserver that restricts nothing itself gets model control behind the admin
    key, ``admin_key`` or else a random one that only this process knows. -> (command, the key the
    supervisor's reloads send, what was done)."""
    if Path(command[0]).name != "tritonserver" or any(a.startswith(("--grpc-restricted-protocol", "--http-restricted-api")) for a in command):
        return command, admin_key, "model control as the command sets it"
    if admin_key:
        return [*command, *restriction_flags(admin_key)], admin_key, "model control needs the header sn-admin-key (SN_ADMIN_KEY)"
    key = secrets.token_hex(24)
    return ([*command, *restriction_flags(key)], key,
            "model control closed to clients (no SN_ADMIN_KEY): set SN_ADMIN_KEY to load, unload and deploy indexes")


def terminate(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()


def main(argv: list[str] | None = None) -> int:
    """Run a tritonserver command line under supervision; exit with its exit code."""
    parser = argparse.ArgumentParser(prog="supervisor.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--http-url", default="http://127.0.0.1:8000", help="the server's HTTP endpoint (the pod's loopback)")
    parser.add_argument("--admin-key", default=os.environ.get("SN_ADMIN_KEY"), help="header value for a restricted repository API")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--metrics-address", default="127.0.0.1", help="where /metrics of the supervisor listens")
    parser.add_argument("--metrics-port", type=int, default=8003, help="0: no metrics endpoint")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- tritonserver ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the server's command line after --")
    if Path(command[0]).name == "tritonserver" and not any("shm-region-prefix-name" in a for a in command):
        command = [*command, region_flag(f"s{os.getpid()}")]  # our prefix, so that a later start can tell its leftovers
    command, admin_key, control = closed_model_control(command, args.admin_key)
    print(f"supervisor: {control}", file=sys.stderr, flush=True)
    swept = sweep_shm()
    if swept:
        print(f"supervisor: removed {len(swept)} shared-memory files that servers which died left behind", file=sys.stderr, flush=True)
    server = subprocess.Popen(command)
    for sig in (signal.SIGINT, signal.SIGTERM):  # the orchestrator's stop reaches the server, which drains
        signal.signal(sig, lambda s, _: server.send_signal(s))
    supervisor = StubSupervisor(server, Repository(args.http_url, admin_key), max_attempts=args.max_attempts)
    supervisor.start()
    if args.metrics_port:
        supervisor.serve_metrics(args.metrics_address, args.metrics_port)
    code = server.wait()
    sweep_shm()  # what the server left: its admission table, its regions once its stubs have let go
    return code


if __name__ == "__main__":
    sys.exit(main())
