"""The GPU suite's dry run: every step of the one command a GPU session runs, on the CPU, so it cannot rot."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_suite_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, "-m", "benchmarks", "gpu-suite", "--dry-run", "--out", str(out),
                        "--workdir", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and list(summary["steps"]) == ["env", "tests", "kernels", "serving"]
    assert {name: step["status"] for name, step in summary["steps"].items()} == dict.fromkeys(summary["steps"], "ok")
    kernels = json.loads((out / "gpu-kernels.json").read_text())
    assert kernels["dry_run"] and kernels["pooling"] and all(row["torch_ms"] > 0 for row in kernels["topk"])
    for model in ("embed", "retrieve"):
        result = json.loads((out / f"serve-tiny-{model}.json").read_text())
        assert [s["target"] for s in result["steps"]] == [5, 10]
        assert all(s["failed"] == 0 and s["succeeded"] > 0 for s in result["steps"])
        assert result["steps"][0]["server"]["models"]["query_encoder"]["requests"] > 0  # the breakdown came from the server
        assert (out / f"serve-{model}.png").stat().st_size > 0
    assert "dry run on the CPU" in (out / "summary.md").read_text()


def test_gpu_suite_refuses_unknown_steps(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks", "gpu-suite", "--dry-run", "--steps", "env,warp", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--steps must name steps of ['env', 'tests', 'kernels', 'serving']; got ['warp']" in r.stderr


def test_kernels_and_gpu_tests_run_in_the_gpu_image_without_the_kits_packages(tmp_path):
    """The GPU image has no tritonclient, Locust or pytriton (they come in the kit's venv, for the served
    sweep only); its own python3 runs the kernel benchmarks and the gpu tests through `python -m benchmarks`."""
    import os
    import site

    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "assets" / "gpu_image"), "SN_IMAGE_SITE": site.getsitepackages()[0]}
    probe = subprocess.run([sys.executable, "-c", "import tritonclient"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "the GPU image lacks it" in probe.stderr  # the emulation holds
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, "-m", "benchmarks", "gpu-suite", "--dry-run", "--steps", "env,kernels,tests", "--out", str(out),
                        "--workdir", str(tmp_path / "work")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    assert {name: step["status"] for name, step in summary["steps"].items()} == {"env": "ok", "kernels": "ok", "tests": "ok"}
    assert "not importable" in json.loads((out / "env.json").read_text())["tritonclient"]


def test_a_deadline_skips_the_steps_that_cannot_fit_and_says_so(tmp_path):
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, "-m", "benchmarks", "gpu-suite", "--dry-run", "--steps", "env,serving", "--deadline-s", "12",
                        "--out", str(out), "--workdir", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "error: not every step ran (serving skipped)" in r.stderr, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["deadline_s"] == 12 and summary["steps"]["env"]["status"] == "ok"
    serving = summary["steps"]["serving"]
    assert serving["status"] == "skipped" and serving["seconds"] < 5, serving
    assert "s left of --deadline-s, it needs about" in serving["error"] and "skipped" in (out / "summary.md").read_text()
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())  # nothing was built for it
