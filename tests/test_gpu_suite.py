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


def test_a_failed_sweep_or_a_skipped_shape_is_reported_beside_the_figures_that_came(tmp_path, monkeypatch):
    """One model's refused run must not cost the other's figures, nor the summary: what came, failed
    and was skipped each has its line."""
    import argparse

    from benchmarks import gpu_suite

    ok = {"sustained_rps": 812.5, "steps": [{"target": 500, "offered_rps": 500.0, "achieved_rps": 499.0, "failed": 0, "p99_ms": 4.2}],
          "max_gpu_memory_mib": 2048.0, "mean_gpu_util_pct": 37.0}

    def serve_one(out, args, s, shape):
        if shape == "bert-base":
            raise gpu_suite.OutOfTime("skipped: 40 s left of --deadline-s, it needs about 200 s")
        return {"embed": {"error": "RuntimeError: the run was refused and wrote no results"}, "retrieve": ok}

    monkeypatch.setattr(gpu_suite, "_serve_one", serve_one)
    s = {"shapes": "minilm,bert-base", "rows": 1000, "slo_p99_ms": 10.0}
    result = gpu_suite.step_serving(tmp_path, argparse.Namespace(dry_run=True), s)
    assert result["minilm"]["retrieve"] == ok and "error" in result["minilm"]["embed"]
    assert result["skipped"] == {"bert-base": "skipped: 40 s left of --deadline-s, it needs about 200 s"}
    assert (tmp_path / "serve-retrieve.png").stat().st_size > 0 and (tmp_path / "serve-embed.png").exists()
    md = gpu_suite.markdown({"dry_run": False, "started": "t", "git_commit": "c", "command": "x", "settings": s,
                             "steps": {"serving": {"status": "ok", "seconds": 1.0, "result": result}}})
    assert "| minilm | embed | failed: RuntimeError: the run was refused and wrote no results | | |" in md
    assert "| minilm | retrieve | 812.5 | 2048 | 37 |" in md
    assert "| bert-base | (skipped) | skipped: 40 s left of --deadline-s" in md
