"""Kernel benchmarks: every ratio is measured side by side in one run, never asserted in a test.

  python -m benchmarks topk-cpu      numpy (OpenBLAS, + torch's MKL for batches) / chunked top-k vs faiss-cpu
                                     IndexFlatIP (N=100k, D=384, fp32), batches 1 to 64
  python -m benchmarks compression   recall cost of int8 / Matryoshka indexes with and without rescoring
  python -m benchmarks gpu-kernels   pooling bandwidth vs device copy and vs torch eager; top-k vs FAISS GPU
                                     and torch.topk (needs CUDA; refuses without)

Each writes JSON + markdown (+ PNG) next to ``--out``. Timings are medians of repeated
runs after warm-up; results on a shared 2-core machine are noisy, hence the ratios.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np

from benchmarks.common import median_seconds
from model_repository.runtime.provenance import git_commit, machine, pyplot, save_figure


def _unit(rng, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _header(kind: str, command: str) -> dict:
    return {"benchmark": kind, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "git_commit": git_commit(), "machine": machine()}


TOPK_CPU_SEARCHES = ("faiss", "numpy", "numpy+torch", "chunked")  # topk_cpu's implementations, in its tables' order


def topk_cpu(out: Path, n: int = 100_000, d: int = 384, batches=(1, 2, 4, 8, 16, 64), ks=(10, 100), repeats: int = 9,
             rounds: int = 3) -> dict:
    """Every CPU search against faiss-cpu ``IndexFlatIP`` on the same vectors, in the same process.

    Rounds run the implementations interleaved (a round visits every cell once); a cell's figure is
    the median of its rounds' medians, with their min and max. Pin the process to one core
    (``taskset -c 0``) to measure what one core of a serving machine does; the affinity is recorded.
    """
    import os

    import faiss

    from kernels.topk import NumpyTopK
    from kernels.topk_chunked import ChunkedTopK

    header = _header("topk-cpu", f"python -m benchmarks topk-cpu --n {n} --rounds {rounds} --out {out}")  # the commit that runs, not the one at the end
    rng = np.random.default_rng(0)
    index = _unit(rng, n, d)
    flat = faiss.IndexFlatIP(d)
    flat.add(index)
    impls = {"faiss": lambda q, k: flat.search(q, k)[::-1],  # faiss returns (scores, ids)
             "numpy": NumpyTopK(index, gemm="numpy").search,  # OpenBLAS for every batch
             "numpy+torch": NumpyTopK(index).search,  # the served default: OpenBLAS GEMV for 1, MKL GEMM for 2+
             "chunked": ChunkedTopK(index, store_dtype=np.float32).search}
    cells = [(b, k, _unit(rng, b, d)) for b in batches for k in ks]
    times = {(b, k, name): [] for b, k, _ in cells for name in impls}
    agreement = {}
    for r in range(rounds):
        for b, k, queries in cells:
            ref_ids = flat.search(queries, k)[1]
            for name, search in impls.items():
                ids, _ = search(queries, k)
                agreement[(b, k, name)] = float(np.mean([len(set(a) & set(x)) / k for a, x in zip(ids, ref_ids)]))
                times[(b, k, name)].append(1e3 * median_seconds(lambda: search(queries, k), repeats))
        print(f"[topk-cpu] round {r + 1}/{rounds} done", flush=True)
    rows = []
    for b, k, _ in cells:
        row = {"batch": b, "k": k}
        for name in impls:
            ms = times[(b, k, name)]
            row[f"{name}_ms"], row[f"{name}_ms_min"], row[f"{name}_ms_max"] = float(np.median(ms)), min(ms), max(ms)
            row[f"{name}_agreement_with_faiss"] = agreement[(b, k, name)]
        for name in impls:
            row[f"{name}_speedup_vs_faiss"] = row["faiss_ms"] / row[f"{name}_ms"]
        row["torch_vs_openblas_speedup"] = row["numpy_ms"] / row["numpy+torch_ms"]
        rows.append(row)
        print(json.dumps({k_: round(v, 3) if isinstance(v, float) else v for k_, v in row.items()}), flush=True)
    result = {**header,
              "sizes": {"n": n, "d": d, "dtype": "float32", "batches": list(batches), "ks": list(ks)},
              "timing": {"rounds": rounds, "repeats_per_round": repeats, "figure": "median of the rounds' medians"},
              "cpus_allowed": sorted(os.sched_getaffinity(0)), "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
              "implementations": {"numpy": "NumpyTopK(gemm='numpy'): numpy @ (OpenBLAS) for every batch",
                                  "numpy+torch": "NumpyTopK(): OpenBLAS GEMV for one query, torch.mm (MKL) for 2+",
                                  "chunked": "ChunkedTopK: the GPU algorithm on numpy, fp32 store"},
              "rows": rows}
    _write(out, result, _topk_markdown(result))
    _plot_topk(result, out.with_suffix(".png"))
    return result


def _topk_markdown(r: dict) -> str:
    names = TOPK_CPU_SEARCHES
    lines = [f"CPU top-k, N={r['sizes']['n']}, D={r['sizes']['d']}, fp32 ({r['date']}, CPUs allowed {r['cpus_allowed']}, "
             f"faiss threads {r['faiss_threads']}; median of {r['timing']['rounds']} rounds [min-max])", "",
             "| batch | k | " + " | ".join(f"{n} ms" for n in names) + " | numpy+torch / faiss speed | numpy+torch / numpy speed |",
             "|---|---|" + "---|" * (len(names) + 2)]
    for x in r["rows"]:
        cells = " | ".join(f"{x[f'{n}_ms']:.2f} [{x[f'{n}_ms_min']:.2f}-{x[f'{n}_ms_max']:.2f}]" for n in names)
        lines.append(f"| {x['batch']} | {x['k']} | {cells} | {x['numpy+torch_speedup_vs_faiss']:.2f}x | {x['torch_vs_openblas_speedup']:.2f}x |")
    worst = min(min(x[f"{n}_agreement_with_faiss"] for n in names) for x in r["rows"])
    lines += ["", f"Lowest agreement of any implementation's ids with faiss's, any cell: {worst:.4f}."]
    return "\n".join(lines) + "\n"


def _plot_topk(result: dict, path: Path) -> None:
    plt = pyplot()
    k = result["sizes"]["ks"][0]
    rows = [x for x in result["rows"] if x["k"] == k]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name in TOPK_CPU_SEARCHES:
        ax.errorbar([x["batch"] for x in rows], [x[f"{name}_ms"] / x["batch"] for x in rows],
                    yerr=[[(x[f"{name}_ms"] - x[f"{name}_ms_min"]) / x["batch"] for x in rows],
                          [(x[f"{name}_ms_max"] - x[f"{name}_ms"]) / x["batch"] for x in rows]], marker="o", capsize=2, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("queries per search (batch)")
    ax.set_ylabel("ms per query (lower is better)")
    ax.set_title(f"CPU top-{k}, {result['sizes']['n']:,} x {result['sizes']['d']} fp32, CPUs {result['cpus_allowed']}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def compression(out: Path, index_dir: Path, queries: list[str], pipeline, k: int = 10) -> dict:
    """Recall@k of compressed search against the exact fp16 answer, on the index as served."""
    from kernels.compressed import RescoringTopK, quantize_int8, truncate
    from kernels.topk import NumpyTopK
    from model_repository.runtime.index import load_index, read_manifest

    index = load_index(index_dir, read_manifest(index_dir)["query_tower_fingerprint"])
    full = index.embeddings
    q = pipeline.embed(queries)
    exact, _ = NumpyTopK(full).search(q, k)
    codes, scales = quantize_int8(full)
    variants = [("int8", codes, scales, full.shape[1] + 4)]
    for dim in (256, 128, 64):
        if dim < full.shape[1]:
            variants.append((f"matryoshka:{dim}", truncate(full, dim).astype(np.float16), None, 2 * dim))
    rows = []
    for name, approx, sc, nbytes in variants:
        for rescore in (k, 50, 200):
            kind = "int8" if name == "int8" else "matryoshka"
            ids, _ = RescoringTopK(full, kind, approx, sc, rescore=rescore).search(q, k)
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact)]))
            rows.append({"compression": name, "rescore": rescore, f"recall@{k}": recall, "bytes_per_vector": nbytes,
                         "bytes_vs_fp16": nbytes / (2 * full.shape[1])})
            print(json.dumps(rows[-1]), flush=True)
    result = {**_header("compression", f"python -m benchmarks compression --out {out}"),
              "index": index.version, "rows_in_index": len(index), "dim": full.shape[1], "queries": len(queries), "k": k,
              "rows": rows}
    lines = [f"Compressed index recall@{k} vs the exact fp16 answer: index {index.version} ({len(index)} x {full.shape[1]}), "
             f"{len(queries)} queries. rescore = k means no rescoring beyond the compressed ranking.", "",
             "| compression | bytes/vector | vs fp16 | rescore | recall@10 |", "|---|---|---|---|---|"]
    for x in rows:
        lines.append(f"| {x['compression']} | {x['bytes_per_vector']} | {x['bytes_vs_fp16']:.2f} | {x['rescore']} | {x[f'recall@{k}']:.3f} |")
    _write(out, result, "\n".join(lines) + "\n")
    _plot_compression(result, out.with_suffix(".png"), k)
    return result


def _plot_compression(result: dict, path: Path, k: int) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name in dict.fromkeys(r["compression"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["compression"] == name]
        ax.plot([r["rescore"] for r in rows], [r[f"recall@{k}"] for r in rows], marker="o", label=f"{name} ({rows[0]['bytes_vs_fp16']:.2f}x fp16 bytes)")
    ax.set_xscale("log")
    ax.set_xlabel("candidates rescored with fp16")
    ax.set_ylabel(f"recall@{k} vs exact")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


# B x T x D: the targets' shapes, then serving's small batches, where a grid of B programs
# leaves most of the SMs idle (a measured question for the GPU run, not yet answered).
POOL_SHAPES = ((64, 512, 768), (256, 128, 1024), (4096, 64, 8192), (1, 32, 384), (8, 32, 768))
TOPK_SIZES = {"n": 1_000_000, "d": 768, "batches": (1, 32, 1024), "ks": (10, 100, 1000, 4096)}
DRY_POOL_SHAPES = ((4, 16, 64),)
DRY_TOPK_SIZES = {"n": 5_000, "d": 64, "batches": (1, 4), "ks": (10, 100)}


def gpu_kernels(out: Path, repeats: int = 50, dry_run: bool = False) -> dict:
    """The kernel targets (bandwidth, speed-ups), measured side by side on a GPU.

    ``dry_run``: tiny shapes on the CPU (kernels interpreted), so that CI runs every line
    of it; its timings mean nothing and are labelled so.
    """
    import torch

    if not dry_run and not torch.cuda.is_available():
        raise RuntimeError("gpu-kernels needs a CUDA device; nothing was measured (run it on a GPU machine, or --dry-run)")
    from kernels.pool_normalize_triton import pool_normalize_triton
    from kernels.pooling_torch import pool_normalize_torch_reference
    from kernels.topk_torch import TorchTopK

    device = "cpu" if dry_run else "cuda"
    repeats = 2 if dry_run else repeats

    def device_ms(fn) -> float:
        for _ in range(2 if dry_run else 5):
            fn()
        if dry_run:
            return 1e3 * median_seconds(fn, repeats, warmup=0)
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / repeats

    result = {**_header("gpu-kernels", f"python -m benchmarks gpu-kernels --out {out}" + (" --dry-run" if dry_run else "")),
              "device": "cpu (dry run: timings mean nothing)" if dry_run else torch.cuda.get_device_name(0),
              "dry_run": dry_run, "pooling": [], "topk": []}
    for b, s, d in DRY_POOL_SHAPES if dry_run else POOL_SHAPES:
        for dtype in (torch.float16, torch.bfloat16):
            gen = torch.Generator(device=device).manual_seed(0)
            h = torch.randn(b, s, d, device=device, dtype=dtype, generator=gen)
            lengths = torch.randint(1, s + 1, (b, 1), device=device, generator=gen)
            mask = (torch.arange(s, device=device)[None, :] < lengths).to(torch.int64)
            copy_dst = torch.empty_like(h)
            copy_ms = device_ms(lambda: copy_dst.copy_(h))
            copy_gbps = 2 * h.numel() * h.element_size() / copy_ms / 1e6  # read + write
            fused_ms = device_ms(lambda: pool_normalize_triton(h, mask, "mean"))
            eager_ms = device_ms(lambda: pool_normalize_torch_reference(h, mask, "mean"))
            moved = h.numel() * h.element_size() + mask.numel() * 8 + b * d * h.element_size()  # read h and mask, write out
            hg = h.clone().requires_grad_(True)
            grad = torch.randn(b, d, device=device, dtype=dtype, generator=gen)
            bwd_fused = device_ms(lambda: torch.autograd.grad(pool_normalize_triton(hg, mask, "mean"), hg, grad))
            bwd_eager = device_ms(lambda: torch.autograd.grad(pool_normalize_torch_reference(hg, mask, "mean").to(dtype), hg, grad))
            moved_bwd = moved + h.numel() * h.element_size()  # forward again, then write dh
            row = {"dtype": str(dtype).split(".")[-1], "shape": [b, s, d], "copy_GBps": copy_gbps,
                   "fwd_fused_ms": fused_ms, "fwd_eager_ms": eager_ms, "fwd_speedup_vs_eager": eager_ms / fused_ms,
                   "fwd_GBps": moved / fused_ms / 1e6, "fwd_pct_of_copy": 100 * moved / fused_ms / 1e6 / copy_gbps,
                   "fwd_bwd_fused_ms": bwd_fused, "fwd_bwd_eager_ms": bwd_eager, "fwd_bwd_speedup_vs_eager": bwd_eager / bwd_fused,
                   "fwd_bwd_pct_of_copy": 100 * moved_bwd / bwd_fused / 1e6 / copy_gbps}
            result["pooling"].append(row)
            _write_partial(out, result, row)
    sizes = DRY_TOPK_SIZES if dry_run else TOPK_SIZES
    n, d = sizes["n"], sizes["d"]
    gen = torch.Generator(device=device).manual_seed(0)
    index_t = torch.nn.functional.normalize(torch.randn(n, d, device=device, generator=gen), dim=1).half()
    index_bytes = index_t.numel() * 2
    copy_gbps = result["pooling"][0]["copy_GBps"]
    searchers = {"torch": TorchTopK(index_t, device=device)}
    try:  # CuPy 14 needs numpy >= 2; where the stub's numpy 1.x is installed it cannot load
        import cupy

        from kernels.topk_chunked import cupy_topk

        searchers["cupy"] = cupy_topk(cupy.asarray(index_t)) if not dry_run else None
    except Exception as e:  # noqa: BLE001 - recorded, not hidden
        result["cupy_note"] = f"CuPy top-k not measured: {type(e).__name__}: {e}"
    searchers = {name: fn for name, fn in searchers.items() if fn is not None}
    try:
        import faiss

        res = faiss.StandardGpuResources()
        flat = faiss.GpuIndexFlatIP(res, d)
        flat.add(index_t.float().cpu().numpy())
        result["topk_faiss"] = f"faiss {faiss.__version__}"
    except (ImportError, AttributeError) as e:
        flat, result["topk_faiss"] = None, f"FAISS GPU not available here ({e}): compared with torch.topk on a full fp16 score matrix"
    for batch in sizes["batches"]:
        q = torch.nn.functional.normalize(torch.randn(batch, d, device=device, generator=gen), dim=1)
        for k in sizes["ks"]:
            row = {"n": n, "d": d, "batch": batch, "k": k, "index_bytes": index_bytes,
                   "floor_ms": index_bytes / copy_gbps / 1e6}  # the index read once at the measured copy bandwidth
            row["torch_topk_full_matrix_ms"] = device_ms(lambda: torch.topk(q.half() @ index_t.T, k, dim=1))
            for name, searcher in searchers.items():
                arg = cupy.asarray(q) if name == "cupy" else q
                ms = device_ms(lambda: searcher.search(arg, k))
                row[f"{name}_ms"] = ms
                row[f"{name}_speedup_vs_torch_topk"] = row["torch_topk_full_matrix_ms"] / ms
                row[f"{name}_pct_of_floor"] = 100 * row["floor_ms"] / ms
            if flat is not None and k <= 2048:
                qn = q.cpu().numpy()
                row["faiss_ms"] = 1e3 * median_seconds(lambda: flat.search(qn, k), 5, warmup=1)
            result["topk"].append(row)
            _write_partial(out, result, row)
    result["complete"] = True
    _write(out, result, "```\n" + json.dumps(result, indent=2) + "\n```\n")
    return result


def _write_partial(out: Path, result: dict, row: dict) -> None:
    """After every row: a run cut short by its deadline keeps what it measured (``complete`` is false)."""
    print(json.dumps(row), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "complete": False}, indent=2) + "\n", encoding="utf-8")


def _write(out: Path, result: dict, markdown: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown, encoding="utf-8")
