"""File helpers every stage shares: content checksums and all-or-nothing writes.

Nothing half-written is ever visible under its final name: a folder is built under
``<name>.tmp`` and renamed into place whole; a file is written beside its target and
replaced atomically.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator


def hash_file(h, path: Path):
    """Feed ``path``'s bytes to the hash object ``h`` in 1 MiB blocks; -> ``h``."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def sha256_file(path: Path) -> str:
    return hash_file(hashlib.sha256(), path).hexdigest()


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield an empty ``<out>.tmp`` to fill; on success it replaces ``out`` whole, on an error it is removed."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a hidden file beside ``path``, then replace ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to a hidden file beside ``path``, then replace ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


ARTIFACTS_MANIFEST = "artifacts.json"  # in a model's version folder: sha256 of every data file it loads


class ArtifactMismatch(RuntimeError):
    """A file a model loads is missing or differs from the sha256 recorded when the repository was rendered."""


def write_artifacts_manifest(folder: Path, files: list[Path]) -> None:
    """Record the sha256 of ``files`` (paths inside ``folder``) in ``folder/artifacts.json``."""
    folder = Path(folder)
    entries = {f.relative_to(folder).as_posix(): sha256_file(f) for f in sorted(files)}
    (folder / ARTIFACTS_MANIFEST).write_text(json.dumps({"sha256": entries}, indent=2) + "\n", encoding="utf-8")


def verify_artifacts(folder: Path | str) -> list[Path]:
    """Check every file ``folder/artifacts.json`` lists against its sha256; -> the files checked.

    A version folder without the manifest is refused: every rendered repository has one."""
    folder = Path(folder)
    manifest = folder / ARTIFACTS_MANIFEST
    if not manifest.exists():
        raise ArtifactMismatch(f"{folder}: no {ARTIFACTS_MANIFEST}; render the repository again (python -m build all)")
    checked = []
    for name, expected in json.loads(manifest.read_text(encoding="utf-8"))["sha256"].items():
        path = folder / name
        actual = sha256_file(path) if path.exists() else "missing"
        if actual != expected:
            raise ArtifactMismatch(f"{path}: sha256 must be {expected}; got {actual}")
        checked.append(path)
    return checked
