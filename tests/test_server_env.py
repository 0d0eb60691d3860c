"""The python-backend stub must import from this project's environment, not the system Python.

The stub ignores PYTHONPATH (it runs its interpreter with -E) and finds `python3`
through PATH; the launcher puts this venv's bin/ first. The first test proves that
the models import from the venv, and that tensors survive the round trip; the second
removes that one line of the mechanism and shows the stub falling back to another
interpreter, so the first test can fail.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from model_repository.launcher import server_env
from tests.conftest import start_server

PROBE = Path(__file__).parent / "assets" / "env_probe"
PROBED = ["sys.executable", "numpy", "tokenizers", "onnxruntime"]  # as in the probe's config.pbtxt
VENV_SITE = sysconfig.get_paths()["purelib"]
VENV_BIN = Path(sys.prefix) / "bin"


@pytest.fixture()
def probe_repository(tmp_path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(PROBE, repo / "env_probe")
    return repo


def report(repo: Path) -> dict:
    return json.loads((repo / "env_probe" / "report.json").read_text(encoding="utf-8"))


def infer_origin(server, module: str) -> str:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("module_index", [1], "INT32")
    tensor.set_data_from_numpy(np.array([PROBED.index(module)], dtype=np.int32))
    try:
        return client.infer("env_probe", [tensor]).as_numpy("origin_utf8").tobytes().decode("utf-8")
    finally:
        client.close()


def test_stub_imports_from_the_project_environment(probe_repository, tmp_path):
    assert sys.prefix != sys.base_prefix, "tests must run inside the project's virtual environment"
    server = start_server(probe_repository, tmp_path / "work")
    try:
        seen = report(probe_repository)
        assert Path(seen["sys.executable"]).parent == VENV_BIN
        for module in ("numpy", "tokenizers", "onnxruntime"):
            assert seen[module].startswith(VENV_SITE), f"{module} imported from {seen[module]}, not {VENV_SITE}"
            assert infer_origin(server, module) == seen[module]  # and tensors come back intact
    finally:
        server.stop()


def test_without_the_venv_on_path_the_stub_uses_another_python(probe_repository, tmp_path):
    env = server_env()
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != VENV_BIN)
    env["PYTHONPATH"] = VENV_SITE  # the obvious fix, which the stub ignores
    server = start_server(probe_repository, tmp_path / "work", env=env)
    server.stop()
    seen = report(probe_repository)
    assert Path(seen["sys.executable"]).parent != VENV_BIN, seen
    assert not seen["numpy"].startswith(VENV_SITE), seen
