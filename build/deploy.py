"""Versioned index deployment with zero downtime, through Triton's explicit model control.

A new index never overwrites anything a server is using: it becomes a new version
folder of ``mips_topk`` (``mips_topk/<n+1>/``, its files hard-linked from the index
build), and Triton is asked over gRPC to load the model again. Triton loads the new
version next to the old one, switches to it once it is ready, and unloads the old one
after its in-flight requests. If the new version fails to load (a manifest that pairs
with another query tower, a failed checksum), the old version keeps serving and the
failed folder is moved out of the repository. The tool checks both before it touches
the repository; the server's own refusal is the backstop.

Triton 2.51 keeps the record of a version that failed to load, and under
``--strict-readiness`` that record alone makes ``/v2/health/ready`` fail although the old
version answers every request: on k8s, a bad upload would take every pod out of service.
Reloading does not clear it; only a successful load of that version number does. So after
a refusal the tool republishes the serving version's files (hard links) under the failed
version's number and loads it: the server swaps to identical content and is ready again
(``tests/test_deploy.py``). ``deployments.jsonl`` records both.

Rollback retires the newest version folder and loads the model again, so the
previous version serves. Both need the server started with
``--model-control-mode=explicit`` (what ``python -m model_repository serve`` does).

Bookkeeping lives next to the repository, never inside it (Triton would take any
folder there for a model): ``<repository>.deploy/{staging,failed,retired}`` and
``<repository>.deploy/deployments.jsonl``.

The commit point is one atomic write of ``config.pbtxt``, which pins the version to serve
(``version_policy { specific }``) together with its index's parameters: a version folder the
config does not name is never loaded, not even by a restart. A deploy that dies midway (killed,
a full disk) leaves ``<repository>.deploy/pending.json``, written before the repository changes;
the next deploy or rollback first settles it: if the server serves the pending version the deploy
is recorded as done, otherwise its folder moves to ``failed/`` and the previous config comes back
(tests/test_deploy.py kills the tool at each step and fills the disk).
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

from google.protobuf import text_format

from model_repository.launcher import GRPC_ADMIN_HEADER  # a server off loopback restricts model control to this header
from model_repository.runtime.files import atomic_write_text
from model_repository.runtime.index import IndexMismatch, load_index, read_manifest, resident_bytes

from .render import parse_model_config

MODEL = "mips_topk"


class DeployError(RuntimeError):
    pass


def versions(repository: Path, model: str = MODEL) -> list[int]:
    return sorted(int(p.name) for p in (repository / model).iterdir() if p.is_dir() and p.name.isdigit())


def _bookkeeping(repository: Path) -> Path:
    return repository.with_name(repository.name + ".deploy")


def _log(repository: Path, event: dict) -> None:
    event = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **event}
    path = _bookkeeping(repository) / "deployments.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


def _write_config_for(repository: Path, version: int) -> None:
    """Point the per-model parameters (index size and dtype) at ``version``'s index.

    The config is parsed as Triton's ModelConfig protobuf, changed field by field and
    written back whole (atomically: Triton reads config.pbtxt only when it loads the model).
    """
    manifest = read_manifest(repository / MODEL / str(version) / "index")
    path = repository / MODEL / "config.pbtxt"
    config = parse_model_config(path.read_text(encoding="utf-8"))
    resident = resident_bytes(manifest, config.parameters["implementation"].string_value)
    for key, value in (("index_rows", str(manifest["count"])), ("index_dtype", manifest["dtype"]), ("index_resident_bytes", str(resident))):
        if key not in config.parameters:
            raise DeployError(f"{MODEL}/config.pbtxt has no parameter '{key}'")
        config.parameters[key].string_value = value
    config.version_policy.specific.versions[:] = [version]  # the commit point: no other folder loads
    atomic_write_text(path, text_format.MessageToString(config))


def _query_tower(repository: Path) -> str:
    context = json.loads((repository / "render.json").read_text(encoding="utf-8"))["context"]
    if context.get("search_step") == "encoder":  # retrieve searches the index inside query_encoder, not mips_topk
        raise DeployError(f"{repository} was rendered with search_step 'encoder': retrieve searches the index the query_encoder "
                          f"holds, and a new {MODEL} version would not change what it serves; render it with "
                          "--search-step separate to deploy indexes live")
    return context["query_tower_fingerprint"]


def _client(url: str):
    import os

    import tritonclient.grpc as grpcclient

    root = os.environ.get("SN_TLS_ROOT_CERT")
    return grpcclient.InferenceServerClient(url, ssl=True, root_certificates=root) if root else grpcclient.InferenceServerClient(url)


def _admin_headers() -> dict | None:
    import os

    key = os.environ.get("SN_ADMIN_KEY")
    return {GRPC_ADMIN_HEADER: key} if key else None


def _load(url: str, timeout_s: float) -> None:
    from tritonclient.utils import InferenceServerException

    with _client(url) as client:
        try:
            client.load_model(MODEL, headers=_admin_headers(), client_timeout=timeout_s)
        except InferenceServerException as e:
            raise DeployError(f"Triton refused to load {MODEL}: {e.message()}") from None


def _serves(url: str, version: int) -> bool:
    try:
        return serving_version(url) == version
    except DeployError:
        return False


def serving_version(url: str) -> int:
    """The newest ready version of mips_topk on the server."""
    with _client(url) as client:
        index = client.get_model_repository_index(headers=_admin_headers(), as_json=True).get("models", [])
    ready = [int(m["version"]) for m in index if m.get("name") == MODEL and m.get("state") == "READY" and m.get("version")]
    if not ready:
        raise DeployError(f"no version of {MODEL} is ready on {url}")
    return max(ready)


def _pending(repository: Path) -> Path:
    return _bookkeeping(repository) / "pending.json"


def recover(repository: Path, url: str) -> int | None:
    """Settle a deploy that died midway (see the module doc); -> the version it removed, or None."""
    marker = _pending(repository)
    if not marker.exists():
        return None
    try:
        pending = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:  # died while writing the marker: nothing in the repository changed yet
        marker.unlink()
        return None
    version = int(pending["version"])
    folder = repository / MODEL / str(version)
    if folder.exists() and _serves(url, version):  # died after the switch: only the record was missing
        _log(repository, {"event": "deploy", "version": version, "index": index_of_version(repository, version),
                          "recovered": True})
        marker.unlink()
        return None
    if folder.exists():
        failed = _bookkeeping(repository) / "failed" / f"{MODEL}-{version}-interrupted-{datetime.datetime.now():%Y%m%dT%H%M%S}"
        failed.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(failed)
    atomic_write_text(repository / MODEL / "config.pbtxt", pending["config"])
    _log(repository, {"event": "deploy-interrupted", "version": version, "undone": True})
    marker.unlink()
    return version


def deploy_index(repository: Path, index_dir: Path, url: str, verify: bool = True, timeout_s: float = 300.0) -> int:
    """Copy ``index_dir`` in as a new version of mips_topk and switch the server to it; -> the version."""
    repository, index_dir = Path(repository), Path(index_dir)
    recover(repository, url)
    manifest = read_manifest(index_dir)
    expected = _query_tower(repository)
    if manifest["query_tower_fingerprint"] != expected:
        raise IndexMismatch(f"{index_dir}: index pairs with query tower {manifest['query_tower_fingerprint']}, but this "
                            f"repository serves query tower {expected}; nothing was deployed")
    if verify:
        load_index(index_dir, expected)  # checksums and shapes, before anything changes
    current = versions(repository)
    new = current[-1] + 1
    staging = _bookkeeping(repository) / "staging" / f"{MODEL}-{new}"
    shutil.rmtree(staging, ignore_errors=True)
    latest = repository / MODEL / str(current[-1])
    shutil.copytree(latest, staging, ignore=shutil.ignore_patterns("index", "__pycache__"), copy_function=os.link)
    shutil.copytree(index_dir, staging / "index", copy_function=os.link)
    old_config = (repository / MODEL / "config.pbtxt").read_text(encoding="utf-8")
    atomic_write_text(_pending(repository), json.dumps({"version": new, "config": old_config}))
    staging.rename(repository / MODEL / str(new))
    try:
        _write_config_for(repository, new)
        _load(url, timeout_s)
    except (DeployError, IndexMismatch, OSError) as e:
        failed = _bookkeeping(repository) / "failed" / f"{MODEL}-{new}-{datetime.datetime.now():%Y%m%dT%H%M%S}"
        failed.parent.mkdir(parents=True, exist_ok=True)
        (repository / MODEL / str(new)).rename(failed)
        atomic_write_text(repository / MODEL / "config.pbtxt", old_config)
        _log(repository, {"event": "deploy-failed", "version": new, "index": manifest.get("index_version"), "error": str(e)})
        _pending(repository).unlink()
        serving = _republish(repository, current[-1], new, url, timeout_s)
        raise DeployError(f"{e}\nversion {current[-1]} kept serving and the failed version was moved to {failed}; {serving}") from None
    _pending(repository).unlink()
    _wait_ready(url, timeout_s)  # the old version unloads after its in-flight requests; readiness waits for that
    _log(repository, {"event": "deploy", "version": new, "index": manifest["index_version"], "from": str(index_dir)})
    return new


def _republish(repository: Path, serving: int, failed: int, url: str, timeout_s: float) -> str:
    """Load a copy of version ``serving`` as version ``failed``: clears Triton's failure record (see the module doc)."""
    staging = _bookkeeping(repository) / "staging" / f"{MODEL}-{failed}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(repository / MODEL / str(serving), staging, ignore=shutil.ignore_patterns("__pycache__"), copy_function=os.link)
    staging.rename(repository / MODEL / str(failed))
    try:
        _write_config_for(repository, failed)
        _load(url, timeout_s)
        _wait_ready(url, timeout_s)
    except (DeployError, OSError) as e:
        _log(repository, {"event": "republish-failed", "version": failed, "copy_of": serving, "error": str(e)})
        return f"republishing it as version {failed} to clear the server's failure record failed too ({e}): readiness may stay false"
    _log(repository, {"event": "republish", "version": failed, "copy_of": serving, "index": index_of_version(repository, serving)})
    return f"version {failed} now serves a copy of version {serving}, and the server reports ready"


def _wait_ready(url: str, timeout_s: float) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    with _client(url) as client:
        while not client.is_server_ready():
            if time.monotonic() > deadline:
                raise DeployError(f"the server at {url} did not report ready within {timeout_s:.0f} s")
            time.sleep(0.1)


def rollback(repository: Path, url: str, timeout_s: float = 300.0) -> int:
    """Retire the newest version of mips_topk; the one before it serves again. -> the version now serving."""
    repository = Path(repository)
    _query_tower(repository)  # refuses a repository whose retrieve does not search mips_topk
    recover(repository, url)
    current = versions(repository)
    if len(current) < 2:
        raise DeployError(f"{MODEL} has only version {current[0]}; there is nothing to roll back to")
    newest, previous = current[-1], current[-2]
    retired = _bookkeeping(repository) / "retired" / f"{MODEL}-{newest}-{datetime.datetime.now():%Y%m%dT%H%M%S}"
    retired.parent.mkdir(parents=True, exist_ok=True)
    (repository / MODEL / str(newest)).rename(retired)
    _write_config_for(repository, previous)
    _load(url, timeout_s)
    _wait_ready(url, timeout_s)
    _log(repository, {"event": "rollback", "version": previous, "index": index_of_version(repository, previous),
                      "retired": str(retired)})
    return previous


def index_of_version(repository: Path, version: int) -> str:
    return read_manifest(repository / MODEL / str(version) / "index")["index_version"]
