"""Evaluation: Recall@1/10/100, nDCG@10 and MRR@10 (ir-measures on pytrec_eval), and query latency.

Each row is a (query tower, doc tower) pair searched exactly (``kernels.topk``) over
the same held-out queries. Query-encoding latency is measured side by side in one
run, on the CPU, tokenization included: the median of single-query calls, and the
per-query time in batches of 64.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import time
from pathlib import Path

import ir_measures
import numpy as np
import torch
from ir_measures import RR, R, nDCG

from kernels.compressed import truncate
from kernels.topk import NumpyTopK
from model_repository.runtime.files import sha256_file
from model_repository.runtime.provenance import pyplot, save_figure

from .config import EvalSet
from .data import document_text, read_eval_corpus, read_eval_queries
from .towers import Tower, cached_embeddings

EMBEDDING_CACHE = Path("artifacts/cache/doc-embeddings")  # keyed by tower-weight and corpus checksums
MEASURES = [R @ 1, R @ 10, R @ 100, nDCG @ 10, RR @ 10]
NAMES = {str(R @ 1): "R@1", str(R @ 10): "R@10", str(R @ 100): "R@100", str(nDCG @ 10): "nDCG@10", str(RR @ 10): "MRR@10"}
DEPTH = 100


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    query_tower: str
    doc_tower: str


BOOTSTRAP = 2000


def bootstrap_interval(per_query: np.ndarray, seed: int = 0, rounds: int = BOOTSTRAP) -> list[float]:
    """95% percentile bootstrap interval of the mean over queries."""
    rng = np.random.default_rng(seed)
    means = per_query[rng.integers(0, len(per_query), size=(rounds, len(per_query)))].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


TRUNCATIONS = (128, 256)


def truncation_recall(query_emb: np.ndarray, doc_emb: np.ndarray, dims=TRUNCATIONS, k: int = 10) -> dict:
    """Recall@k of a ``matryoshka:<d>`` index searched alone (no rescoring) against the exact
    full-width top k: how much of the answer survives truncating both sides to d dimensions."""
    k = min(k, len(doc_emb))
    exact, _ = NumpyTopK(doc_emb).search(query_emb, k)
    out = {}
    for d in dims:
        if d >= doc_emb.shape[1]:
            continue
        got, _ = NumpyTopK(truncate(doc_emb, d)).search(truncate(query_emb, d), k)
        out[f"matryoshka:{d}"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, got)]))
    return out


def retrieval_metrics(query_emb: np.ndarray, doc_emb: np.ndarray, doc_ids: list[str], queries: list[dict]) -> dict:
    """The measures, unrounded, plus the 95% bootstrap interval of nDCG@10 over queries."""
    ids, scores = NumpyTopK(doc_emb).search(query_emb, min(DEPTH, len(doc_ids)))
    qrels = [ir_measures.Qrel(q["id"], d, g) for q in queries for d, g in q["relevance"].items()]
    run = [ir_measures.ScoredDoc(q["id"], doc_ids[j], float(s)) for q, row, srow in zip(queries, ids, scores) for j, s in zip(row, srow)]
    got = ir_measures.calc_aggregate(MEASURES, qrels, run)
    out = {NAMES[str(m)]: float(v) for m, v in got.items()}
    ndcg = {q["id"]: 0.0 for q in queries}  # a query with nothing relevant in the run scores 0
    for m in ir_measures.iter_calc([nDCG @ 10], qrels, run):
        ndcg[m.query_id] = float(m.value)
    out["nDCG@10_ci95"] = bootstrap_interval(np.array(list(ndcg.values())))
    out["R@10_vs_exact"] = truncation_recall(query_emb, doc_emb)
    return out


def query_latency(tower: Tower, texts: list[str]) -> dict:
    tower.eval()
    with torch.inference_mode():
        for t in texts[:5]:
            tower(**tower.tokenize([t]))
        single = []
        for t in texts:
            start = time.perf_counter()
            tower(**tower.tokenize([t]))
            single.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(0, len(texts), 64):
            tower(**tower.tokenize(texts[i : i + 64]))
        batched = (time.perf_counter() - start) / len(texts)
    return {"batch1_median_ms": statistics.median(single) * 1e3, "batch64_ms_per_query": batched * 1e3,
            "parameters": sum(p.numel() for p in tower.parameters()), "threads": torch.get_num_threads()}


LATENCY_ROUNDS = 3


def measure_latency(rows: list[Row], sample_set: EvalSet, latency_queries: int, tower=None, rounds: int = LATENCY_ROUNDS) -> dict:
    """Each row's query tower on the first ``latency_queries`` queries of ``sample_set``: ``rounds``
    interleaved rounds (every tower once a round), each figure the median over rounds, the rounds kept."""
    towers = {}
    load = tower or (lambda path, role: Tower.load(path, f"eval {role} tower"))
    docs = read_eval_corpus(sample_set.corpus)
    sample = [x["query"] for x in read_eval_queries(sample_set.queries, {d["id"] for d in docs})][:latency_queries]
    runs: dict[str, list[dict]] = {row.name: [] for row in rows}
    for _ in range(rounds):
        for row in rows:
            towers.setdefault(row.name, load(row.query_tower, "query"))
            runs[row.name].append(query_latency(towers[row.name], sample))
    out = {}
    for name, per_round in runs.items():
        out[name] = dict(per_round[0])
        for key, rounds_key in (("batch1_median_ms", "batch1_median_rounds_ms"), ("batch64_ms_per_query", "batch64_rounds_ms")):
            out[name][key] = statistics.median(r[key] for r in per_round)
            out[name][rounds_key] = [r[key] for r in per_round]
        out[name]["queries"] = len(sample)
    return out


def evaluate(rows: list[Row], sets: list[EvalSet], batch_size: int = 64, latency_queries: int = 200,
             cache: Path | None = None) -> dict:
    """``latency_queries = 0`` skips the speed measurement (dev runs that only choose settings);
    ``cache``: a folder that keeps document embeddings between calls."""
    towers: dict[str, Tower] = {}

    def tower(path: str, role: str) -> Tower:
        if path not in towers:
            towers[path] = Tower.load(path, f"eval {role} tower")
        return towers[path]

    def encode_docs(path: str, texts: list[str], desc: str) -> np.ndarray:  # the tower is loaded only on a cache miss
        return tower(path, "doc").encode(texts, batch_size, desc=desc)

    results: dict = {"sets": {}, "latency": {}}
    for s in sets:
        docs = read_eval_corpus(s.corpus)
        queries = read_eval_queries(s.queries, {d["id"] for d in docs})
        texts = [document_text(d) for d in docs]
        doc_cache: dict[str, np.ndarray] = {}
        results["sets"][s.name] = {"documents": len(docs), "queries": len(queries), "rows": {}}
        for row in rows:
            if row.doc_tower not in doc_cache:
                encode = functools.partial(encode_docs, row.doc_tower, texts, f"{s.name}: {row.name} docs")
                doc_cache[row.doc_tower] = cached_embeddings(cache, row.doc_tower, sha256_file(Path(s.corpus)).encode(), encode)
            q = tower(row.query_tower, "query").encode([x["query"] for x in queries], batch_size)
            results["sets"][s.name]["rows"][row.name] = retrieval_metrics(q, doc_cache[row.doc_tower], [d["id"] for d in docs], queries)
    if latency_queries:
        results["latency"] = measure_latency(rows, sets[0], latency_queries, tower)
    results["rows"] = [dataclasses.asdict(r) for r in rows]
    results["ratios"] = ratios(results)
    return results


STUDENT, STAGE1, BASELINE = "student -> stage-1 doc index", "stage-1 towers", "off-the-shelf all-MiniLM-L6-v2"


def ratios(results: dict) -> dict:
    """Exact ratios from unrounded values: student / stage 1 nDCG@10 per set, stage-1 speed / student speed."""
    out: dict = {"ndcg10_student_over_stage1": {}, "ndcg10_stage1_minus_start": {}}
    for name, s in results["sets"].items():
        r = s["rows"]
        if STUDENT in r and STAGE1 in r and r[STAGE1]["nDCG@10"]:
            out["ndcg10_student_over_stage1"][name] = r[STUDENT]["nDCG@10"] / r[STAGE1]["nDCG@10"]
        if STAGE1 in r and BASELINE in r:
            out["ndcg10_stage1_minus_start"][name] = r[STAGE1]["nDCG@10"] - r[BASELINE]["nDCG@10"]
    lat = results["latency"]
    if STUDENT in lat and STAGE1 in lat:
        out["speedup_batch1"] = lat[STAGE1]["batch1_median_ms"] / lat[STUDENT]["batch1_median_ms"]
        out["speedup_batch64"] = lat[STAGE1]["batch64_ms_per_query"] / lat[STUDENT]["batch64_ms_per_query"]
    return out


def markdown(results: dict) -> str:
    lines = []
    for name, s in results["sets"].items():
        lines += [f"**{name}** ({s['queries']} queries, {s['documents']} documents)", "",
                  "| row | R@1 | R@10 | R@100 | nDCG@10 [95% CI] | MRR@10 |", "|---|---|---|---|---|---|"]
        for row, m in s["rows"].items():
            lo, hi = m["nDCG@10_ci95"]
            lines.append(f"| {row} | {m['R@1']:.3f} | {m['R@10']:.3f} | {m['R@100']:.3f} | {m['nDCG@10']:.3f} [{lo:.3f}, {hi:.3f}] "
                         f"| {m['MRR@10']:.3f} |")
        dims = sorted({d for m in s["rows"].values() for d in m.get("R@10_vs_exact", {})}, key=lambda d: int(d.split(":")[1]))
        if dims:
            lines += ["", "truncated index searched alone, recall@10 against the exact full-width top 10: "
                      + "; ".join(f"{row}: " + ", ".join(f"{d} {m['R@10_vs_exact'][d]:.3f}" for d in dims) for row, m in s["rows"].items())]
        ratio = results.get("ratios", {}).get("ndcg10_student_over_stage1", {}).get(name)
        if ratio is not None:
            lines.append(f"\nstudent / stage 1, nDCG@10: {ratio:.4f}")
        lines.append("")
    if not results["latency"]:
        return "\n".join(lines) + "\n"
    lines += ["**query encoding on the CPU** (torch, in-process, tokenization included; not served)", "",
              "| query tower | parameters | batch 1, median ms | batch 64, ms per query |", "|---|---|---|---|"]
    for row, lat in results["latency"].items():
        lines.append(f"| {row} | {lat['parameters'] / 1e6:.1f} M | {lat['batch1_median_ms']:.2f} | {lat['batch64_ms_per_query']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    sets = list(results["sets"])
    rows = list(next(iter(results["sets"].values()))["rows"])
    fig, axes = plt.subplots(1, 2 if results["latency"] else 1, figsize=(11, 3.8), squeeze=False)
    axes = axes[0]
    width = 0.8 / len(rows)
    for n, row in enumerate(rows):
        values = [results["sets"][s]["rows"][row]["nDCG@10"] for s in sets]
        ci = np.array([results["sets"][s]["rows"][row]["nDCG@10_ci95"] for s in sets]).T
        axes[0].bar(np.arange(len(sets)) + n * width, values, width, label=row,
                    yerr=np.abs(ci - np.array(values)), capsize=3)
    axes[0].set_xticks(np.arange(len(sets)) + width * (len(rows) - 1) / 2, sets)
    axes[0].set_ylabel("nDCG@10")
    axes[0].legend(fontsize=8)
    axes[0].set_title("nDCG@10 with 95% bootstrap intervals", fontsize=9)
    if results["latency"]:
        axes[1].bar(rows, [results["latency"][r]["batch1_median_ms"] for r in rows], color=["C0", "C1", "C2", "C3"][: len(rows)])
        axes[1].set_ylabel("query encoding, batch 1, median ms (CPU)")
        axes[1].tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "metrics.md").write_text(markdown(results), encoding="utf-8")
    plot(results, out / "metrics.png")
