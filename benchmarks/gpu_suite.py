"""python -m benchmarks gpu-suite: everything a GPU session measures, in one command.

Steps (``--steps``, in this order; each one bounded, each failure recorded with its
log, and the rest still run):

- ``env``: the GPU, its driver and memory, and the versions that ran;
- ``tests``: the ``gpu``-marked tests (kernels, chunked and torch top-k, placement);
- ``kernels``: ``python -m benchmarks gpu-kernels`` (pooling against the copy bandwidth
  and eager torch, forward and backward; top-k against ``torch.topk`` on a full score
  matrix, and FAISS GPU where it can be imported);
- ``serving``: for each tower shape, a synthetic repository (``python -m build
  synthetic``: random-init tower of the real shape, random fp16 index of ``--rows``),
  served by the pytriton ``tritonserver`` on loopback with the torch encoder, the
  Triton pooling kernel and the torch top-k; an open-loop sweep of ``embed`` and
  ``retrieve`` with Triton's per-model breakdown and ``nvidia-smi`` samples (GPU
  utilisation and memory) during each step.

Everything lands in ``--out`` (default ``benchmarks/results/<gpu>-<date>/``):
``summary.json`` (rewritten after every step, so a run cut short keeps what it did),
``summary.md``, the raw JSON of every figure, logs, and a p99-against-load plot per model.

``--dry-run`` runs every step on the CPU with tiny sizes (kernels interpreted, the CPU
flavour served): CI runs it so that the suite cannot rot. Its timings mean nothing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.capacity import planner
from benchmarks.common import free_port, stop_process_group, wait_healthy
from model_repository.runtime.provenance import git_commit, machine, pyplot, save_figure

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("env", "tests", "kernels", "serving")
GPU_TESTS = ("tests/test_kernel_pool_triton.py", "tests/test_topk_chunked.py", "tests/test_placement.py")
FULL = {"shapes": "minilm,bert-base", "rows": 1_000_000, "sweep": "500,1000,2000,4000,8000", "step_time": 8.0,
        "slo_p99_ms": 10.0, "processes": 8}
DRY = {"shapes": "tiny", "rows": 2000, "sweep": "5,10", "step_time": 2.0, "slo_p99_ms": 1000.0, "processes": 1}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results/<gpu>-<date>)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the suite itself, measures nothing")
    p.add_argument("--shapes", default=None, help=f"tower shapes to serve (default: {FULL['shapes']}; dry run: {DRY['shapes']})")
    p.add_argument("--rows", type=int, default=None, help=f"documents in the served index (default: {FULL['rows']})")
    p.add_argument("--sweep", default=None, help=f"open-loop requests/s, comma-separated (default: {FULL['sweep']})")
    p.add_argument("--step-time", type=float, default=None, help=f"seconds per load step (default: {FULL['step_time']:g})")
    p.add_argument("--slo-p99-ms", type=float, default=None, help=f"p99 target for the sustained rate (default: {FULL['slo_p99_ms']:g})")
    p.add_argument("--processes", type=int, default=None, help=f"Locust processes (default: {FULL['processes']})")
    p.add_argument("--workdir", type=Path, default=Path("artifacts/gpu-suite"), help="synthetic artifacts and server logs")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="wall clock for the whole suite: every step is cut to what is left, a step that cannot fit is skipped "
                        "and says so (a GPU session has 15 minutes of device time, its machine's start included)")


def _settings(args: argparse.Namespace) -> dict:
    base = DRY if args.dry_run else FULL
    return {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in base.items()}


def _run(cmd: list[str], log: Path, timeout_s: float, env: dict | None = None) -> int:
    """A step's subprocess, its output in ``log``; killed (with its children) at the limit."""
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env or os.environ.copy(),
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"{' '.join(cmd[:4])} ... did not finish within {timeout_s:.0f} s; see {log.name}") from None


class OutOfTime(RuntimeError):
    """What is left of ``--deadline-s`` cannot hold this step."""


def _require(args, need_s: float) -> None:
    """Refuse (OutOfTime) a step that cannot finish before the deadline, before it starts anything."""
    _budget(args, need_s, need_s)


def _warmup_s(args) -> float:
    return 2.0 if args.dry_run else 5.0


def _budget(args, cap_s: float, need_s: float = 5.0) -> float:
    """Seconds this step may take: ``cap_s``, cut to what is left before the deadline (with 5 s to write)."""
    if getattr(args, "deadline", None) is None:
        return cap_s
    left = args.deadline - time.monotonic() - 5
    if left < need_s:
        raise OutOfTime(f"skipped: {max(left, 0):.0f} s left of --deadline-s, it needs about {need_s:.0f} s")
    return min(cap_s, left)


def _nvidia_smi(query: str) -> list[list[str]]:
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"], capture_output=True,
                         text=True, timeout=20)
    return [[v.strip() for v in line.split(",")] for line in out.stdout.strip().splitlines() if line.strip()]


def step_env(out: Path, args, s: dict) -> dict:
    import numpy
    import torch

    info = {"machine": machine(), "git_commit": git_commit(), "python": sys.version.split()[0], "numpy": numpy.__version__,
            "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
            "gpus": [dict(zip(("name", "memory_mib", "driver"), row)) for row in _nvidia_smi("name,memory.total,driver_version")]}
    for module in ("triton", "cupy", "tritonclient", "locust", "pytriton"):
        try:
            info[module] = getattr(__import__(module), "__version__", "installed")
        except Exception as e:  # noqa: BLE001 - what is missing is a result here
            info[module] = f"not importable: {type(e).__name__}: {e}"
    (out / "env.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def step_tests(out: Path, args, s: dict) -> dict:
    code = _run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *GPU_TESTS], out / "tests.log",
                _budget(args, 900, 20))
    last = (out / "tests.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", last[0] if last else "")}
    if code not in (0, 5):
        raise RuntimeError(f"gpu tests failed (exit {code}): {last}; see tests.log")
    return {"exit": code, **counts}


def step_kernels(out: Path, args, s: dict) -> dict:
    env = os.environ.copy()
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, "-m", "benchmarks", "gpu-kernels", "--out", str(out / "gpu-kernels.json")]
    code = _run(cmd + (["--dry-run"] if args.dry_run else []), out / "kernels.log", _budget(args, 1200, 30), env)
    if code != 0:
        raise RuntimeError(f"gpu-kernels exited with {code}; see kernels.log")
    result = json.loads((out / "gpu-kernels.json").read_text(encoding="utf-8"))
    return {"pooling_rows": len(result["pooling"]), "topk_rows": len(result["topk"]), "faiss": result.get("topk_faiss"),
            "cupy": result.get("cupy_note", "measured")}


class GpuSampler:
    """nvidia-smi every second while a load step runs: utilisation and memory per GPU."""

    def __init__(self):
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.wait(1.0):
            for i, row in enumerate(_nvidia_smi("utilization.gpu,memory.used")):
                self.samples.append({"t": time.time(), "gpu": i, "util_pct": float(row[0]), "memory_mib": float(row[1])})

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def _serve_one(out: Path, args, s: dict, shape: str) -> dict:
    from benchmarks.load.runner import add_load_arguments

    load_s = 2 * (len(s["sweep"].split(",")) * s["step_time"] + _warmup_s(args) + 5)  # embed and retrieve
    _require(args, load_s + (20 if args.dry_run else 90))  # + build, index and server start: a shape that cannot finish is skipped
    work = args.workdir / shape
    flavour = [] if args.dry_run else ["--target", "gpu", "--encoder-implementation", "torch", "--topk-implementation", "torch",
                                       "--pool-implementation", "triton"]
    build = [sys.executable, "-m", "build", "synthetic", "--shape", shape, "--rows", str(s["rows"]), "--artifacts", str(work), *flavour]
    if _run(build, out / f"build-{shape}.log", _budget(args, 1200, load_s + 30)) != 0:
        raise RuntimeError(f"python -m build synthetic failed for {shape}; see build-{shape}.log")
    grpc, http, metrics = free_port(), free_port(), free_port()
    serve = [sys.executable, "-m", "model_repository", "serve", "--repository", str(work / "model_repository"),
             "--workdir", str(work / "server"), "--grpc-port", str(grpc), "--http-port", str(http),
             "--metrics-port", str(metrics), "--ready-timeout", "600"]
    log = open(out / f"server-{shape}.log", "wb")
    proc = subprocess.Popen(serve, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    results = {}
    try:
        wait_healthy(f"http://127.0.0.1:{http}/v2/health/ready", proc, _budget(args, 900, load_s + 10))
        parser = argparse.ArgumentParser()
        add_load_arguments(parser)
        for model in ("embed", "retrieve"):  # each on its own: a refused or failed run of one leaves the other's figures
            try:
                results[model] = _sweep_one(out, args, s, shape, model, grpc, metrics, parser, load_s / 2)
            except (RuntimeError, OutOfTime) as e:
                results[model] = {"error": f"{type(e).__name__}: {e}"}
        if all("error" in r for r in results.values()):
            raise RuntimeError(f"no sweep of {shape} gave figures: {results}")
    finally:
        stop_process_group(proc, 60)
        log.close()
    return results


def _sweep_one(out: Path, args, s: dict, shape: str, model: str, grpc: int, metrics: int, parser, need_s: float) -> dict:
    """One model's open-loop sweep, with nvidia-smi sampled during it; its raw JSON is written beside the summary."""
    from benchmarks.load.runner import run_load

    _require(args, need_s)  # a sweep that cannot finish before the deadline is not started
    raw = out / f"serve-{shape}-{model}.json"
    load = parser.parse_args([
        "--grpc-url", f"127.0.0.1:{grpc}", "--metrics-url", f"http://127.0.0.1:{metrics}/metrics",
        "--model", model, "--load-mode", "open", "--steps", s["sweep"], "--step-time", str(s["step_time"]),
        "--warmup", f"{_warmup_s(args):g}", "--processes", str(s["processes"]),
        "--queries", str(_queries_file()), "--out", str(raw)])
    with GpuSampler() as sampler:
        result = run_load(load)
    result["gpu_samples"] = sampler.samples
    sustained = planner.sustained_step(result["steps"], s["slo_p99_ms"])
    result["sustained_within_slo"] = {"slo_p99_ms": s["slo_p99_ms"], "requests_per_s": sustained["achieved_rps"] if sustained else None}
    raw.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    utils = [x["util_pct"] for x in sampler.samples]
    return {"sustained_rps": result["sustained_within_slo"]["requests_per_s"],
            "steps": [{k: st[k] for k in ("target", "offered_rps", "achieved_rps", "failed")} |
                      {"p99_ms": (st["latency_ms"] or {}).get("p99")} for st in result["steps"]],
            "max_gpu_memory_mib": max((x["memory_mib"] for x in sampler.samples), default=None),
            "mean_gpu_util_pct": sum(utils) / len(utils) if utils else None}


def _queries_file() -> Path:
    """Real queries where the default corpus is built; on a bare GPU machine, a small file of made-up ones."""
    real = ROOT / "artifacts" / "corpus" / "python-docs" / "queries.jsonl"
    if real.exists():
        return real
    path = ROOT / "artifacts" / "gpu-suite" / "queries.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"query": f"how do I use feature {i} of the standard library"}) + "\n" for i in range(200)),
                    encoding="utf-8")
    return path


def step_serving(out: Path, args, s: dict) -> dict:
    results, skipped = {}, {}
    for shape in s["shapes"].split(","):  # in order: the first shape is the headline, later ones where time is left
        try:
            results[shape] = _serve_one(out, args, s, shape)
        except OutOfTime as e:
            if not results:
                raise
            skipped[shape] = str(e)
    for model in ("embed", "retrieve"):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for shape, by_model in results.items():
            steps = [st for st in by_model[model].get("steps", []) if st["p99_ms"] is not None]  # none where it failed
            ax.plot([st["offered_rps"] for st in steps], [st["p99_ms"] for st in steps], marker="o", label=f"{shape} p99")
        ax.axhline(s["slo_p99_ms"], color="red", linestyle="--", label=f"SLO p99 {s['slo_p99_ms']:g} ms")
        ax.set(xlabel="offered requests/s (open loop)", ylabel="p99 latency, ms (log)", yscale="log",
               title=f"{model} · {'dry run, CPU' if args.dry_run else _gpu_name()} · {s['rows']} docs")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        save_figure(fig, out / f"serve-{model}.png", dpi=120)
        plt.close(fig)
    return {**results, **({"skipped": skipped} if skipped else {})}


def _gpu_name() -> str:
    gpus = _nvidia_smi("name")
    return gpus[0][0] if gpus else "no GPU"


def default_out(dry_run: bool) -> Path:
    if dry_run:
        return Path("artifacts/benchmarks/gpu-suite-dry-run")
    slug = re.sub(r"[^a-z0-9]+", "-", _gpu_name().lower().replace("nvidia", "")).strip("-") or "gpu"
    return ROOT / "benchmarks" / "results" / f"{slug}-{datetime.date.today().isoformat()}"


def markdown(summary: dict) -> str:
    lines = [f"# GPU suite{' (dry run on the CPU: no figure here means anything)' if summary['dry_run'] else ''}", "",
             f"- Started {summary['started']}; commit `{summary['git_commit']}`; command `{summary['command']}`",
             f"- Settings: {json.dumps(summary['settings'])}", "", "| step | status | seconds | result |", "|---|---|---|---|"]
    for name, step in summary["steps"].items():
        detail = step.get("error") or json.dumps(step.get("result"))[:300]
        lines.append(f"| {name} | {step['status']} | {step['seconds']:.0f} | {detail} |")
    serving = summary["steps"].get("serving", {}).get("result") or {}
    if serving:
        lines += ["", f"Sustained open-loop rate within p99 <= {summary['settings']['slo_p99_ms']:g} ms:", "",
                  "| shape | model | requests/s | max GPU memory MiB | mean GPU util % |", "|---|---|---|---|---|"]
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        for shape, by_model in serving.items():
            if shape == "skipped":  # shapes the deadline left out
                lines += [f"| {name} | (skipped) | {why} | | |" for name, why in by_model.items()]
                continue
            for model, r in by_model.items():
                lines.append(f"| {shape} | {model} | failed: {r['error']} | | |" if "error" in r else
                             f"| {shape} | {model} | {fmt(r['sustained_rps'], '.1f')} | {fmt(r['max_gpu_memory_mib'], '.0f')} "
                             f"| {fmt(r['mean_gpu_util_pct'], '.0f')} |")
    return "\n".join(lines) + "\n"


def run_suite(args: argparse.Namespace) -> dict:
    steps = [x.strip() for x in args.steps.split(",") if x.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"--steps must name steps of {list(STEPS)}; got {unknown}")
    s = _settings(args)
    out = args.out or default_out(args.dry_run)
    out.mkdir(parents=True, exist_ok=True)
    args.workdir = args.workdir.resolve()
    args.deadline = None if args.deadline_s is None else time.monotonic() + args.deadline_s
    summary = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "dry_run": args.dry_run,
               "command": "python -m benchmarks gpu-suite " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["gpu-suite"] else "",
               "git_commit": git_commit(), "settings": s, "deadline_s": args.deadline_s, "steps": {}}
    for name in steps:
        print(f"gpu-suite: {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            result = {"env": step_env, "tests": step_tests, "kernels": step_kernels, "serving": step_serving}[name](out, args, s)
            summary["steps"][name] = {"status": "ok", "result": result}
        except OutOfTime as e:
            summary["steps"][name] = {"status": "skipped", "error": str(e)}
        except Exception as e:  # noqa: BLE001 - a failed step is a result; the next steps still run
            summary["steps"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        summary["steps"][name]["seconds"] = time.monotonic() - t0
        print(f"gpu-suite: {name} {summary['steps'][name]['status']} in {summary['steps'][name]['seconds']:.0f} s",
              file=sys.stderr, flush=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (out / "summary.md").write_text(markdown(summary), encoding="utf-8")
    summary["out"] = str(out)
    return summary
