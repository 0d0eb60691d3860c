"""deploy/gpu_kit.py: what the one-call GPU run carries and how it installs, checked on the CPU.

The full rehearsal (fetch from the registries, then ``run --dry-run`` in an environment made to look
like the GPU image) takes minutes and the network; its record is in
benchmarks/results/gpu-rehearsal-2026-12-06/. These tests check the parts a GPU session cannot afford
to find broken: the trim keeps what tritonserver and its stub need, and the venv puts the kit's
numpy before the image's packages while still seeing them.
"""
from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_kit", ROOT / "deploy" / "gpu_kit.py")
gpu_kit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_kit)
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _fake_wheel_tree(root: Path, stub_names: bytes = b"libcudart-1.so libtritonserver-2.so") -> Path:
    files = {
        "pytriton/__init__.py": b"from pytriton.triton import Triton\n",  # PyTriton's Python API: not carried
        "pytriton/client/client.py": b"",
        "pytriton/tritonserver/bin/tritonserver": b"\x7fELF server",
        "pytriton/tritonserver/backends/python/libtriton_python.so": b"\x7fELF backend",
        "pytriton/tritonserver/backends/python/triton_python_backend_utils.py": b"",
        "pytriton/tritonserver/caches/local/libtritoncache_local.so": b"\x7fELF cache",
        "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub": b"\x7fELF stub " + stub_names,
        "pytriton/tritonserver/python_backend_stubs/3.13/triton_python_backend_stub": b"\x7fELF stub libpython3-a1.13.so.1.0",
        "nvidia_pytriton.libs/libcudart-1.so": b"\x7fELF",
        "nvidia_pytriton.libs/libtritonserver-2.so": b"\x7fELF",
        "nvidia_pytriton.libs/libpython3-a1.13.so.1.0": b"\x7fELF",
        "nvidia_pytriton-0.7.0.dist-info/METADATA": b"Name: nvidia-pytriton\nVersion: 0.7.0\n",
        "nvidia_pytriton-0.7.0.dist-info/RECORD": b"",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_the_trim_keeps_the_server_its_libraries_and_one_stub_and_nothing_of_pytritons_api(tmp_path):
    kept = gpu_kit.trim_pytriton(_fake_wheel_tree(tmp_path), "3.12")
    assert sorted(kept) == [
        "nvidia_pytriton-0.7.0.dist-info/METADATA",
        "nvidia_pytriton.libs/libcudart-1.so",
        "nvidia_pytriton.libs/libtritonserver-2.so",  # the 3.13 stub's libpython is left behind
        "pytriton/__init__.py",
        "pytriton/tritonserver/backends/python/libtriton_python.so",
        "pytriton/tritonserver/backends/python/triton_python_backend_utils.py",
        "pytriton/tritonserver/bin/tritonserver",
        "pytriton/tritonserver/caches/local/libtritoncache_local.so",
        "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub",
    ]
    assert "import" not in kept["pytriton/__init__.py"].read_text()  # importable without PyTriton's dependencies
    # a stub that links the bundled libpython keeps it
    kept = gpu_kit.trim_pytriton(_fake_wheel_tree(tmp_path / "13"), "3.13")
    assert "nvidia_pytriton.libs/libpython3-a1.13.so.1.0" in kept
    with pytest.raises(FileNotFoundError, match="no python stub for Python 3.9"):
        gpu_kit.trim_pytriton(_fake_wheel_tree(tmp_path / "9"), "3.9")


def _tar(path: Path, files: dict[str, str], mode: int = 0o644) -> None:
    with tarfile.open(path, "w:xz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))


def _fake_kit(kit: Path, python: str, numpy_version: str = "1.26.4+kit") -> Path:
    """A kit whose numpy is this environment's numpy, run from the kit's own package under another version."""
    import numpy

    real = Path(numpy.__file__).parent
    shim = (f"__path__ = [{str(real)!r}]\n__file__ = {str(real / '__init__.py')!r}\n"
            f"exec(compile(open(__file__).read(), __file__, 'exec'))\n__version__ = {numpy_version!r}\n__kit__ = True\n")
    kit.mkdir(parents=True)
    _tar(kit / "site.tar.xz", {"numpy/__init__.py": shim, "tritonclient/__init__.py": "",
                               "tritonclient/grpc/__init__.py": "", "locust/__init__.py": "__version__ = 'kit'\n"})
    _tar(kit / "pytriton.tar.xz", {"pytriton/__init__.py": "", f"pytriton/tritonserver/python_backend_stubs/{python}/"
                                   "triton_python_backend_stub": "#!/bin/sh\n"}, mode=0o755)
    (kit / "kit.json").write_text(f'{{"python": "{python}"}}\n')
    return kit


def _venv_python(venv: Path, code: str) -> str:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_the_venv_takes_numpy_from_the_kit_and_torch_from_the_image(tmp_path):
    """The image's python3 is itself a venv: a venv made from it sees the base interpreter, not torch.
    Here this environment plays the image (torch, numpy 1.26); the kit's numpy must win, torch must be found."""
    venv = tmp_path / "venv"
    result = gpu_kit.install(_fake_kit(tmp_path / "kit", PY), venv, sys.executable)
    assert result["numpy"] == "1.26.4+kit" and _venv_python(venv, "import numpy; print(numpy.__kit__)") == "True"
    assert _venv_python(venv, "import torch, sys; print(torch.__file__)").startswith(sys.prefix)
    assert result["pytriton"].startswith(str(venv)) and result["image_site_packages"]
    assert _venv_python(venv, "import tritonclient; print(tritonclient.__file__)").startswith(str(venv))  # the kit's, not the image's
    assert _venv_python(venv, "import sys; print(sys.prefix)") == str(venv)  # the stub finds this venv through PATH


def test_the_install_refuses_a_kit_for_another_python_or_with_numpy_2(tmp_path):
    other = "3.9" if PY != "3.9" else "3.10"
    with pytest.raises(SystemExit, match=f"fetched for Python {other}; .* is Python {PY}"):
        gpu_kit.install(_fake_kit(tmp_path / "other", other), tmp_path / "v1", sys.executable)
    with pytest.raises(SystemExit, match=r"numpy must be the kit's 1.x .*got 2.5.0"):
        gpu_kit.install(_fake_kit(tmp_path / "np2", PY, "2.5.0"), tmp_path / "v2", sys.executable)
