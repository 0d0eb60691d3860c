"""python -m benchmarks load|plan|overload|burst|soak|compare|tail|topk-cpu|compression|gpu-kernels|gpu-suite|roofline.

Every call to a served model goes through ``clients/`` (gRPC) and the metrics endpoint.
The offline benchmarks (kernels, index compression) run ``kernels/`` and the serving
runtime in-process; nothing here imports a served ``model.py``, the launcher or ``build/``.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from benchmarks.capacity import planner
from benchmarks.capacity.plan_report import plan_markdown
from benchmarks.capacity.search import search_load
from benchmarks.common import read_queries
from benchmarks.load import report, triton_metrics
from benchmarks.load.runner import add_load_arguments, run_load
from model_repository.runtime.rendered import Rendered


def stop_on_sigterm(signum: int, _frame) -> None:
    """The servers, peers and Locust a benchmark starts run in sessions of their own, out of reach of a
    signal to ours; Python's default SIGTERM ends the process without unwinding, which orphaned them
    (a tritonserver kept its ports, cores and shared memory). Raising instead runs every ``finally``
    that stops them."""
    raise SystemExit(128 + signum)


def cmd_load(args: argparse.Namespace) -> int:
    result = run_load(args)
    png = report.plot(result, args.out.with_suffix(".png"))
    print(report.format_steps(result))
    for step in result["steps"]:
        if step["server"]:
            print(f"\nstep {step['index']} (target {step['target']:g} {step['target_unit']}): where the time goes")
            print(triton_metrics.format_table(step["server"]))
        if step["errors"]:
            print(f"step {step['index']} errors: {step['errors']}")
    print(f"\nresults: {args.out}\nplot:    {png}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    args.load_mode = "open"
    sizes = planner.sizes_from_server(args.grpc_url)
    result = search_load(args) if args.search_from else run_load(args)
    plan = planner.plan(result["steps"], args.slo_p99_ms, args.target_qps, args.headroom, sizes,
                        int(args.workspace_gib * planner.GIB), int(args.device_memory_gib * planner.GIB))
    result["plan"] = plan
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    png = report.plot(result, args.out.with_suffix(".png"), slo_p99_ms=args.slo_p99_ms)
    md = args.out.with_suffix(".md")
    md.write_text(plan_markdown(result, plan, sizes, png), encoding="utf-8")
    print(md.read_text(encoding="utf-8"))
    print(f"report: {md}\nplot:   {png}")
    return 0


def cmd_overload(args: argparse.Namespace) -> int:
    """Capacity first, then factor x capacity, truly open loop: admitted p99 and rejections per window."""
    from benchmarks.capacity import overload

    result = overload.run(args)
    print(overload.format_windows(result))
    print(json.dumps(result["verdict"], indent=2))
    print(f"results: {args.out}\nplot:    {args.out.with_suffix('.png')}")
    return 0 if result["verdict"]["passed"] else 1


def cmd_burst(args: argparse.Namespace) -> int:
    """Closed-loop bursts of 1..64 plain tritonclient callers: refusals, errors, answers, p99 per level."""
    from benchmarks.capacity import burst

    result = burst.run(args)
    md = burst.markdown(result)
    args.out.with_suffix(".md").write_text(md, encoding="utf-8")
    print(md)
    print(f"results: {args.out}\nplot:    {args.out.with_suffix('.png')}")
    return 0 if result["passed"] else 1


def cmd_overload_compare(args: argparse.Namespace) -> int:
    from benchmarks.capacity import overload

    results = {}
    for item in args.results:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"overload-compare: give NAME=path, got {item!r}")
        results[name] = json.loads(Path(path).read_text(encoding="utf-8"))
    print(f"plot: {overload.plot_policies(results, args.out)}")
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    """Half the measured capacity, open loop, for --windows x --window-s: failures, p99 drift, RSS growth."""
    from benchmarks.capacity import soak

    result = soak.run(args)
    for w, rss in zip(result["windows"], result["rss_per_window"]):
        mib = ", ".join(f"{name} {(b or 0) / 2**20:.0f}" for name, b in rss.items())
        print(f"window {w['index']}: {w['succeeded']} ok, {w['failed']} failed, p99 {w['latency_ms'].get('p99')} ms; RSS MiB: {mib}")
    print(json.dumps(result["verdict"], indent=2))
    print(f"results: {args.out}\nplot:    {args.out.with_suffix('.png')}")
    return 0 if result["verdict"]["passed"] else 1


def cmd_compare(args: argparse.Namespace) -> int:
    """Our ensemble against the peers, each alone and pinned, in interleaved rounds (benchmarks/compare.py)."""
    from benchmarks import compare

    args.out = args.out or Path(f"artifacts/benchmarks/compare-{args.model}.json")
    summary = compare.run(args)
    print(compare.markdown(summary))
    print(f"results: {args.out}\nplot:    {args.out.with_suffix('.png')}")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Where the slowest calls spend their time: client send times matched to Triton's per-request trace."""
    from benchmarks import tail

    result = tail.run(args)
    print(tail.markdown(result))
    print(f"results: {args.out}\nplot:    {args.out.with_suffix('.png')}")
    return 0


def cmd_topk_cpu(args: argparse.Namespace) -> int:
    from benchmarks import kernel_bench

    kernel_bench.topk_cpu(args.out, n=args.n, rounds=args.rounds)
    print(args.out.with_suffix(".md").read_text(encoding="utf-8"))
    return 0


def cmd_compression(args: argparse.Namespace) -> int:
    from kernels.pooling import Pooling
    from model_repository.runtime.encoder import OnnxEncoder
    from model_repository.runtime.pipeline import EmbeddingPipeline
    from model_repository.runtime.text import TextTokenizer

    from benchmarks import kernel_bench

    render = Rendered.read(args.repository).context
    pipeline = EmbeddingPipeline(TextTokenizer(args.repository / "tokenizer" / "1" / render.tokenizer_file, render.max_tokens),
                                 OnnxEncoder(args.repository / "query_encoder" / "1" / render.onnx_file), Pooling.parse(render.pooling))
    queries = read_queries(Path("artifacts/corpus/python-docs/queries.jsonl"))
    kernel_bench.compression(args.out, args.repository / "mips_topk" / "1" / "index", queries, pipeline)
    print(args.out.with_suffix(".md").read_text(encoding="utf-8"))
    return 0


def cmd_gpu_kernels(args: argparse.Namespace) -> int:
    from benchmarks import kernel_bench

    kernel_bench.gpu_kernels(args.out, dry_run=args.dry_run)
    return 0


def cmd_roofline(args: argparse.Namespace) -> int:
    from benchmarks.capacity import roofline

    result = roofline.report(tower_name=args.tower, dim=args.dim, rows=args.rows, tokens=args.tokens)
    calibration = None
    if args.calibrate:
        from model_repository.runtime.encoder import OnnxEncoder
        from model_repository.runtime.text import TextTokenizer

        render = Rendered.read(args.repository).context
        tokenizer = TextTokenizer(args.repository / "tokenizer" / "1" / render.tokenizer_file, render.max_tokens)
        encoder = OnnxEncoder(args.repository / "query_encoder" / "1" / render.onnx_file)
        queries = read_queries(Path(args.queries))[:64]
        calibration = roofline.calibrate_cpu(encoder, tokenizer(queries), roofline.TOWERS["minilm"], rows=args.calibration_rows)
        result["cpu_calibration"] = calibration
    if args.gpu_kernels:
        result["gpu_topk_comparison"] = roofline.compare_topk(json.loads(args.gpu_kernels.read_text(encoding="utf-8")), args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = roofline.markdown(result, calibration)
    args.out.with_suffix(".md").write_text(md, encoding="utf-8")
    print(md)
    return 0


def cmd_gpu_suite(args: argparse.Namespace) -> int:
    from benchmarks import gpu_suite

    summary = gpu_suite.run_suite(args)
    print(gpu_suite.markdown(summary))
    print(f"results: {summary['out']}")
    failed = [name for name, step in summary["steps"].items() if step["status"] != "ok"]
    if failed:
        detail = ", ".join(f"{name} {summary['steps'][name]['status']}" for name in failed)
        print(f"error: not every step ran ({detail}); the logs are in {summary['out']}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    add_load_arguments(sub.add_parser("load", help="a stepped Locust load test over gRPC"))
    p = sub.add_parser("plan", help="sweep offered load, then size replicas and memory for a target QPS under a p99 SLO")
    add_load_arguments(p)
    p.add_argument("--slo-p99-ms", type=float, required=True)
    p.add_argument("--target-qps", type=float, required=True)
    p.add_argument("--headroom", type=float, default=0.3, help="spare capacity per replica (0.3: run at most at 1/1.3 of sustained)")
    p.add_argument("--workspace-gib", type=float, default=1.0, help="per-replica working memory beyond engine and index (estimate)")
    p.add_argument("--device-memory-gib", type=float, default=80.0, help="memory of one device (H100: 80)")
    p.add_argument("--search-from", type=float, default=0.0,
                   help="requests/s: instead of --steps, search the highest rate within the SLO from here (up, then bisected)")
    p.add_argument("--search-factor", type=float, default=1.5, help="the search's step between rates")
    p.add_argument("--search-refine", type=int, default=2, help="bisections between the last rate that held and the first that failed")
    p.add_argument("--search-max-rps", type=float, default=1000.0, help="the search stops climbing here")
    p.add_argument("--min-requests", type=int, default=2000, help="requests per searched rate (sets its duration)")
    p.set_defaults(steps="10,20,40,80,120,160", out=Path("artifacts/benchmarks/plan.json"))
    p = sub.add_parser("overload", help="capacity, then 3x it truly open loop: admitted p99, rejections, per 5 s window")
    from benchmarks.capacity import overload

    overload.add_arguments(p)
    from benchmarks.capacity import burst

    burst.add_arguments(sub.add_parser("burst", help="closed-loop bursts of 1..64 plain tritonclient callers: every call answered?"))
    p = sub.add_parser("overload-compare", help="one plot of several overload runs (e.g. one per queue policy)")
    p.add_argument("results", nargs="+", help="NAME=path/to/overload.json")
    p.add_argument("--out", type=Path, required=True, help="PNG")
    p = sub.add_parser("soak", help="hold half the measured capacity, open loop: failures, p99 drift, RSS of server and stubs")
    add_load_arguments(p)
    from benchmarks.capacity import soak

    soak.add_arguments(p)
    p.set_defaults(model="retrieve", warmup=10.0, out=Path("artifacts/benchmarks/soak.json"))
    p = sub.add_parser("compare", help="our ensemble against Infinity, fastembed and sentence-transformers (+ faiss), pinned, repeated")
    add_load_arguments(p)
    from benchmarks import compare

    compare.add_arguments(p)
    from benchmarks import tail

    tail.add_arguments(sub.add_parser("tail", help="where the slowest calls spend their time (client + Triton's per-request trace)"))
    p = sub.add_parser("topk-cpu", help="numpy, numpy+torch and chunked top-k vs faiss-cpu IndexFlatIP (D=384, fp32), batches 1-64")
    p.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/topk-cpu.json"))
    p.add_argument("--n", type=int, default=100_000, help="index rows (random unit vectors)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; a figure is their median")
    p = sub.add_parser("compression", help="recall cost of int8 / Matryoshka indexes, with and without fp16 rescoring")
    p.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/compression.json"))
    p.add_argument("--repository", type=Path, default=Path("artifacts/model_repository"))
    p = sub.add_parser("gpu-kernels", help="pooling and top-k on a GPU: bandwidth, eager torch, FAISS GPU (needs CUDA)")
    p.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/gpu-kernels.json"))
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (kernels interpreted): checks the code, measures nothing")
    p = sub.add_parser("roofline", help="predicted QPS and memory fit per GPU (H100, H200, A100, L4) from spec figures")
    p.add_argument("--tower", choices=["minilm", "bert-base"], default="minilm")
    p.add_argument("--dim", type=int, default=384, help="index width")
    p.add_argument("--rows", type=int, default=1_000_000, help="index rows for the throughput table")
    p.add_argument("--tokens", type=int, default=16, help="tokens per query")
    p.add_argument("--calibrate", action="store_true", help="also predict and measure on this CPU (needs the built repository)")
    p.add_argument("--calibration-rows", type=int, default=100_000)
    p.add_argument("--repository", type=Path, default=Path("artifacts/model_repository"))
    p.add_argument("--queries", default="artifacts/corpus/python-docs/queries.jsonl")
    p.add_argument("--gpu-kernels", type=Path, default=None, help="a gpu-suite gpu-kernels.json: predicted vs measured top-k")
    p.add_argument("--device", choices=["H100", "H200", "A100", "L4"], default="H100", help="the GPU of --gpu-kernels")
    p.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/roofline.json"))
    from benchmarks import gpu_suite

    gpu_suite.add_arguments(sub.add_parser("gpu-suite", help="everything a GPU session measures: env, gpu tests, kernels, served sweep"))
    args = parser.parse_args(argv)
    if argv is None:  # the command line, not a test calling main(): a SIGTERM unwinds like Ctrl-C
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        return {"load": cmd_load, "plan": cmd_plan, "overload": cmd_overload, "burst": cmd_burst, "overload-compare": cmd_overload_compare, "soak": cmd_soak, "compare": cmd_compare, "tail": cmd_tail,
                "topk-cpu": cmd_topk_cpu, "compression": cmd_compression, "gpu-kernels": cmd_gpu_kernels,
                "gpu-suite": cmd_gpu_suite, "roofline": cmd_roofline}[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
