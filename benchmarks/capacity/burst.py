"""Closed-loop bursts: N callers, each a plain ``tritonclient`` gRPC client in a thread of its own, sending
single-row requests back to back with no retries. A closed loop cannot overload a server (each caller
waits for its answer), so every call must be answered: the run counts refusals and other errors per
level, checks every answer against the one a single caller got for the same text, and reports p50/p99.

    python -m benchmarks burst --model retrieve --clients 1,8,16,32,64 --calls 20
"""
from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import check_loopback, error_kind, read_queries, save_result
from model_repository.runtime.provenance import git_commit, machine, pyplot, save_figure

ANSWER = {"embed": "EMBEDDING", "retrieve": "DOC_IDS"}


def request(model: str, text: str, k: int) -> list:
    import tritonclient.grpc as grpcclient  # here: `python -m benchmarks` starts where tritonclient is not installed (the GPU image)

    inputs = [grpcclient.InferInput("TEXT", [1, 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    if model == "retrieve":
        inputs.append(grpcclient.InferInput("K", [1, 1], "INT32"))
        inputs[1].set_data_from_numpy(np.array([[k]], dtype=np.int32))
    return inputs


def same(model: str, answer: np.ndarray, reference: np.ndarray) -> bool:
    if model == "embed":  # the CPU encoder runs one request per execution: the same floats, within rounding
        return answer.shape == reference.shape and bool(np.allclose(answer, reference, atol=1e-5))
    return bool(np.array_equal(answer, reference))


def level(url: str, model: str, texts: list[str], references: dict, clients: int, calls: int, k: int, timeout_s: float) -> dict:
    """``clients`` callers, ``calls`` each, back to back; every caller starts at a barrier."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    barrier = threading.Barrier(clients)
    results: list[list] = [[] for _ in range(clients)]

    def caller(i: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        try:
            barrier.wait()
            for j in range(calls):
                text = texts[(i * calls + j) % len(texts)]
                start = time.perf_counter()
                try:
                    out = client.infer(model, request(model, text, k), client_timeout=timeout_s).as_numpy(ANSWER[model])
                    results[i].append((time.perf_counter() - start, "OK", same(model, out, references[text])))
                except InferenceServerException as e:
                    results[i].append((time.perf_counter() - start, error_kind(e), False))
        finally:
            client.close()

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s * calls + 60)
    wall = time.perf_counter() - started
    flat = [r for rs in results for r in rs]
    ok = [r for r in flat if r[1] == "OK"]
    errors: dict[str, int] = {}
    for r in flat:
        if r[1] != "OK":
            errors[r[1]] = errors.get(r[1], 0) + 1
    latencies = np.array([r[0] for r in ok]) * 1e3
    return {"clients": clients, "calls": len(flat), "answered": len(ok), "refused": errors.get("StatusCode.UNAVAILABLE", 0),
            "errors": errors, "mismatched": sum(not r[2] for r in ok), "throughput_rps": len(ok) / wall if wall else 0.0,
            "latency_ms": {q: float(np.percentile(latencies, p)) for q, p in (("p50", 50), ("p99", 99))} if len(ok) else {}}


def run(args: argparse.Namespace) -> dict:
    check_loopback(args.grpc_url)
    import tritonclient.grpc as grpcclient

    texts = read_queries(Path(args.queries))[: args.texts]
    client = grpcclient.InferenceServerClient(args.grpc_url)
    try:  # the single caller's answer to every text: what every level's answers must equal
        references = {t: client.infer(args.model, request(args.model, t, args.k)).as_numpy(ANSWER[args.model]) for t in texts}
    finally:
        client.close()
    levels = []
    for n in [int(x) for x in args.clients.split(",") if x.strip()]:
        print(f"burst: {n} clients x {args.calls} calls ({args.model})", flush=True)
        levels.append(level(args.grpc_url, args.model, texts, references, n, args.calls, args.k, args.grpc_timeout))
    result = {"model": args.model, "k": args.k, "levels": levels, "git_commit": git_commit(), "machine": machine(),
              "passed": all(lv["answered"] == lv["calls"] and lv["mismatched"] == 0 for lv in levels)}
    return save_result(result, args.out, plot)


def markdown(result: dict) -> str:
    lines = [f"`{result['model']}`, closed loop, single-row calls, plain tritonclient, no retries", "",
             "| clients | calls | answered | refused | other errors | answers unlike the single caller's | p50 ms | p99 ms | answered/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for lv in result["levels"]:
        other = sum(v for k, v in lv["errors"].items() if k != "StatusCode.UNAVAILABLE")
        lat = lv["latency_ms"]
        lines.append(f"| {lv['clients']} | {lv['calls']} | {lv['answered']} | {lv['refused']} | {other} | {lv['mismatched']} | "
                     f"{lat.get('p50', float('nan')):.1f} | {lat.get('p99', float('nan')):.1f} | {lv['throughput_rps']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    clients = [lv["clients"] for lv in result["levels"]]
    for q in ("p50", "p99"):
        ax.plot(clients, [lv["latency_ms"].get(q, float("nan")) for lv in result["levels"]], marker="o", label=q)
    for lv in result["levels"]:
        if lv["refused"]:
            ax.annotate(f"{lv['refused']} refused", (lv["clients"], lv["latency_ms"].get("p99", 0)), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent closed-loop clients")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{result['model']}: closed-loop bursts, no retries")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grpc-url", default="127.0.0.1:8001")
    p.add_argument("--model", choices=sorted(ANSWER), default="retrieve")
    p.add_argument("--clients", default="1,8,16,32,64", help="concurrent callers per level")
    p.add_argument("--calls", type=int, default=20, help="calls per caller per level")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--texts", type=int, default=128, help="distinct queries, cycled")
    p.add_argument("--queries", default="artifacts/corpus/python-docs/queries.jsonl")
    p.add_argument("--grpc-timeout", type=float, default=30.0, help="each call's deadline, s")
    p.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/burst.json"))
