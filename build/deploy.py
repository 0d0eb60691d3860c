"""Versioned index deployment with zero downtime, through Triton's explicit model control.

A new index never overwrites anything a server is using: it becomes a new version
folder of ``mips_topk`` (``mips_topk/<n+1>/``, its files hard-linked from the index
build), and Triton is asked over gRPC to load the model again. A repository rendered with
``--search-step encoder`` holds the index in ``query_encoder`` too (its ``retrieve`` searches
there): every model that holds it gets the same new version number, and each step below runs
for each of them, the encoder first. Triton loads the new
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
from model_repository.runtime.rendered import Rendered

from .render import parse_model_config

MODEL = "mips_topk"
# The parameter that names each holder's search kernel (resident bytes depend on it).
IMPLEMENTATION_KEY = {"mips_topk": "implementation", "query_encoder": "search"}


class DeployError(RuntimeError):
    pass


def versions(repository: Path, model: str = MODEL) -> list[int]:
    return sorted(int(p.name) for p in (repository / model).iterdir() if p.is_dir() and p.name.isdigit())


def holders(repository: Path) -> list[str]:
    """The models whose version folders hold the index: the one ``retrieve`` searches first."""
    return ["query_encoder", MODEL] if Rendered.read(repository).context.search_step == "encoder" else [MODEL]


def _bookkeeping(repository: Path) -> Path:
    return repository.with_name(repository.name + ".deploy")


def _log(repository: Path, event: dict) -> None:
    event = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **event}
    path = _bookkeeping(repository) / "deployments.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


def _write_config_for(repository: Path, version: int, model: str = MODEL) -> None:
    """Point ``model``'s parameters (index size and dtype) at ``version``'s index.

    The config is parsed as Triton's ModelConfig protobuf, changed field by field and
    written back whole (atomically: Triton reads config.pbtxt only when it loads the model).
    """
    manifest = read_manifest(repository / model / str(version) / "index")
    path = repository / model / "config.pbtxt"
    config = parse_model_config(path.read_text(encoding="utf-8"))
    resident = resident_bytes(manifest, config.parameters[IMPLEMENTATION_KEY[model]].string_value)
    for key, value in (("index_rows", str(manifest["count"])), ("index_dtype", manifest["dtype"]), ("index_resident_bytes", str(resident))):
        if key not in config.parameters:
            raise DeployError(f"{model}/config.pbtxt has no parameter '{key}'")
        config.parameters[key].string_value = value
    config.version_policy.specific.versions[:] = [version]  # the commit point: no other folder loads
    atomic_write_text(path, text_format.MessageToString(config))


def _query_tower(repository: Path) -> str:
    return Rendered.read(repository).context.query_tower_fingerprint


def _client(url: str):
    import os

    import tritonclient.grpc as grpcclient

    root = os.environ.get("SN_TLS_ROOT_CERT")
    return grpcclient.InferenceServerClient(url, ssl=True, root_certificates=root) if root else grpcclient.InferenceServerClient(url)


def _admin_headers() -> dict | None:
    import os

    key = os.environ.get("SN_ADMIN_KEY")
    return {GRPC_ADMIN_HEADER: key} if key else None


def _load(url: str, timeout_s: float, model: str = MODEL) -> None:
    from tritonclient.utils import InferenceServerException

    with _client(url) as client:
        try:
            client.load_model(model, headers=_admin_headers(), client_timeout=timeout_s)
        except InferenceServerException as e:
            raise DeployError(f"Triton refused to load {model}: {e.message()}") from None


def _serves(url: str, version: int, models: list[str]) -> bool:
    try:
        return all(serving_version(url, m) == version for m in models)
    except DeployError:
        return False


def serving_version(url: str, model: str = MODEL) -> int:
    """The newest ready version of ``model`` (mips_topk) on the server."""
    with _client(url) as client:
        index = client.get_model_repository_index(headers=_admin_headers(), as_json=True).get("models", [])
    ready = [int(m["version"]) for m in index if m.get("name") == model and m.get("state") == "READY" and m.get("version")]
    if not ready:
        raise DeployError(f"no version of {model} is ready on {url}")
    return max(ready)


def _withdraw(repository: Path, version: int, configs: dict[str, str], tag: str) -> list[str]:
    """Move ``version``'s folder of each model in ``configs`` to failed/ and put back its config from before the
    deploy; -> where the folders went."""
    moved = []
    for model, config in configs.items():
        folder = repository / model / str(version)
        if folder.exists():
            failed = _bookkeeping(repository) / "failed" / f"{model}-{version}{tag}-{datetime.datetime.now():%Y%m%dT%H%M%S}"
            failed.parent.mkdir(parents=True, exist_ok=True)
            folder.rename(failed)
            moved.append(str(failed))
        atomic_write_text(repository / model / "config.pbtxt", config)
    return moved


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
    configs = pending.get("configs") or {MODEL: pending["config"]}  # every holder's config before the deploy (or an older marker's)
    if all((repository / m / str(version)).exists() for m in configs) and _serves(url, version, list(configs)):  # died after the switch
        _log(repository, {"event": "deploy", "version": version, "index": index_of_version(repository, version),
                          "recovered": True})
        marker.unlink()
        return None
    _withdraw(repository, version, configs, "-interrupted")
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
    models = holders(repository)
    current = versions(repository)
    if any(versions(repository, m)[-1] != current[-1] for m in models):
        raise DeployError(f"the index holders {models} serve versions {[versions(repository, m)[-1] for m in models]}, "
                          "not one version: settle the repository by hand before deploying")
    new = current[-1] + 1
    staged = {}
    for model in models:
        staging = staged[model] = _bookkeeping(repository) / "staging" / f"{model}-{new}"
        shutil.rmtree(staging, ignore_errors=True)
        latest = repository / model / str(current[-1])
        shutil.copytree(latest, staging, ignore=shutil.ignore_patterns("index", "__pycache__"), copy_function=os.link)
        shutil.copytree(index_dir, staging / "index", copy_function=os.link)
    old_configs = {m: (repository / m / "config.pbtxt").read_text(encoding="utf-8") for m in models}
    atomic_write_text(_pending(repository), json.dumps({"version": new, "configs": old_configs}))
    for model in models:
        staged[model].rename(repository / model / str(new))
    try:
        for model in models:
            _write_config_for(repository, new, model)
            _load(url, timeout_s, model)
    except (DeployError, IndexMismatch, OSError) as e:
        moved = _withdraw(repository, new, old_configs, "")
        _log(repository, {"event": "deploy-failed", "version": new, "index": manifest.get("index_version"), "error": str(e)})
        _pending(repository).unlink()
        serving = _republish(repository, current[-1], new, url, timeout_s)
        raise DeployError(f"{e}\nversion {current[-1]} kept serving and the failed version was moved to {', '.join(moved)}; "
                          f"{serving}") from None
    _pending(repository).unlink()
    _wait_ready(url, timeout_s)  # the old version unloads after its in-flight requests; readiness waits for that
    _log(repository, {"event": "deploy", "version": new, "index": manifest["index_version"], "from": str(index_dir)})
    return new


def _republish(repository: Path, serving: int, failed: int, url: str, timeout_s: float) -> str:
    """Load a copy of version ``serving`` as version ``failed`` in every holder: clears Triton's failure record (see
    the module doc), and brings back the serving index in a holder that had loaded the failed one."""
    try:
        for model in holders(repository):
            staging = _bookkeeping(repository) / "staging" / f"{model}-{failed}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(repository / model / str(serving), staging, ignore=shutil.ignore_patterns("__pycache__"),
                            copy_function=os.link)
            staging.rename(repository / model / str(failed))
            _write_config_for(repository, failed, model)
            _load(url, timeout_s, model)
        _wait_ready(url, timeout_s)
    except (DeployError, OSError) as e:
        _log(repository, {"event": "republish-failed", "version": failed, "copy_of": serving, "error": str(e)})
        return f"republishing it as version {failed} to clear the server's failure record failed too ({e}): readiness may stay false"
    _log(repository, {"event": "republish", "version": failed, "copy_of": serving, "index": index_of_version(repository, serving)})
    return f"version {failed} now serves a copy of version {serving}, and the server reports ready"


def _wait_ready(url: str, timeout_s: float) -> None:
    import time

    from tritonclient.utils import InferenceServerException

    deadline = time.monotonic() + timeout_s
    with _client(url) as client:
        try:
            while not client.is_server_ready():
                if time.monotonic() > deadline:
                    raise DeployError(f"the server at {url} did not report ready within {timeout_s:.0f} s")
                time.sleep(0.1)
        except InferenceServerException as e:
            raise DeployError(f"the server at {url} stopped answering while the deploy waited for it to be ready "
                              f"({e.message()}); its config pins the new version, which it serves once restarted") from None


def rollback(repository: Path, url: str, timeout_s: float = 300.0) -> int:
    """Retire the newest version of mips_topk; the one before it serves again. -> the version now serving."""
    repository = Path(repository)
    recover(repository, url)
    current = versions(repository)
    if len(current) < 2:
        raise DeployError(f"{MODEL} has only version {current[0]}; there is nothing to roll back to")
    newest, previous = current[-1], current[-2]
    for model in holders(repository):  # the encoder first: retrieve searches there
        retired = _bookkeeping(repository) / "retired" / f"{model}-{newest}-{datetime.datetime.now():%Y%m%dT%H%M%S}"
        retired.parent.mkdir(parents=True, exist_ok=True)
        (repository / model / str(newest)).rename(retired)
        _write_config_for(repository, previous, model)
        _load(url, timeout_s, model)
    _wait_ready(url, timeout_s)
    _log(repository, {"event": "rollback", "version": previous, "index": index_of_version(repository, previous),
                      "retired": str(retired)})
    return previous


def index_of_version(repository: Path, version: int) -> str:
    return read_manifest(repository / MODEL / str(version) / "index")["index_version"]
