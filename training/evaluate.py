"""Evaluation: Recall@1/10/100, nDCG@10 and MRR@10 (ir-measures on pytrec_eval), and query latency.

Each row is a (query tower, doc tower) pair searched exactly (``kernels.topk``) over
the same held-out queries. Query-encoding latency is measured side by side in one
run, on the CPU, tokenization included: the median of single-query calls, and the
per-query time in batches of 64.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

import ir_measures
import numpy as np
import torch
from ir_measures import RR, R, nDCG

from kernels.topk import NumpyTopK
from model_repository.runtime.provenance import pyplot

from .config import EvalSet
from .data import document_text, read_eval_corpus, read_eval_queries
from .towers import Tower

MEASURES = [R @ 1, R @ 10, R @ 100, nDCG @ 10, RR @ 10]
NAMES = {str(R @ 1): "R@1", str(R @ 10): "R@10", str(R @ 100): "R@100", str(nDCG @ 10): "nDCG@10", str(RR @ 10): "MRR@10"}
DEPTH = 100


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    query_tower: str
    doc_tower: str


def retrieval_metrics(query_emb: np.ndarray, doc_emb: np.ndarray, doc_ids: list[str], queries: list[dict]) -> dict:
    ids, scores = NumpyTopK(doc_emb).search(query_emb, min(DEPTH, len(doc_ids)))
    qrels = [ir_measures.Qrel(q["id"], d, g) for q in queries for d, g in q["relevance"].items()]
    run = [ir_measures.ScoredDoc(q["id"], doc_ids[j], float(s)) for q, row, srow in zip(queries, ids, scores) for j, s in zip(row, srow)]
    got = ir_measures.calc_aggregate(MEASURES, qrels, run)
    return {NAMES[str(m)]: round(float(v), 4) for m, v in got.items()}


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
    return {"batch1_median_ms": round(statistics.median(single) * 1e3, 3), "batch64_ms_per_query": round(batched * 1e3, 3),
            "parameters": sum(p.numel() for p in tower.parameters()), "threads": torch.get_num_threads()}


def evaluate(rows: list[Row], sets: list[EvalSet], batch_size: int = 64, latency_queries: int = 200) -> dict:
    towers: dict[str, Tower] = {}

    def tower(path: str, role: str) -> Tower:
        if path not in towers:
            towers[path] = Tower.load(path, f"eval {role} tower")
        return towers[path]

    results: dict = {"sets": {}, "latency": {}}
    for s in sets:
        docs = read_eval_corpus(s.corpus)
        queries = read_eval_queries(s.queries, {d["id"] for d in docs})
        texts = [document_text(d) for d in docs]
        doc_cache: dict[str, np.ndarray] = {}
        results["sets"][s.name] = {"documents": len(docs), "queries": len(queries), "rows": {}}
        for row in rows:
            if row.doc_tower not in doc_cache:
                doc_cache[row.doc_tower] = tower(row.doc_tower, "doc").encode(texts, batch_size, desc=f"{s.name}: {row.name} docs")
            q = tower(row.query_tower, "query").encode([x["query"] for x in queries], batch_size)
            results["sets"][s.name]["rows"][row.name] = retrieval_metrics(q, doc_cache[row.doc_tower], [d["id"] for d in docs], queries)
    sample_set = sets[0]
    docs = read_eval_corpus(sample_set.corpus)
    sample = [x["query"] for x in read_eval_queries(sample_set.queries, {d["id"] for d in docs})][:latency_queries]
    for row in rows:
        results["latency"][row.name] = query_latency(tower(row.query_tower, "query"), sample)
    results["rows"] = [dataclasses.asdict(r) for r in rows]
    return results


def markdown(results: dict) -> str:
    lines = []
    for name, s in results["sets"].items():
        lines += [f"**{name}** ({s['queries']} queries, {s['documents']} documents)", "",
                  "| row | R@1 | R@10 | R@100 | nDCG@10 | MRR@10 |", "|---|---|---|---|---|---|"]
        for row, m in s["rows"].items():
            lines.append(f"| {row} | {m['R@1']:.3f} | {m['R@10']:.3f} | {m['R@100']:.3f} | {m['nDCG@10']:.3f} | {m['MRR@10']:.3f} |")
        lines.append("")
    lines += ["**query encoding on the CPU** (torch, tokenization included)", "",
              "| query tower | parameters | batch 1, median ms | batch 64, ms per query |", "|---|---|---|---|"]
    for row, lat in results["latency"].items():
        lines.append(f"| {row} | {lat['parameters'] / 1e6:.1f} M | {lat['batch1_median_ms']:.2f} | {lat['batch64_ms_per_query']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    sets = list(results["sets"])
    rows = list(results["latency"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(rows)
    for n, row in enumerate(rows):
        values = [results["sets"][s]["rows"][row]["nDCG@10"] for s in sets]
        axes[0].bar(np.arange(len(sets)) + n * width, values, width, label=row)
    axes[0].set_xticks(np.arange(len(sets)) + width * (len(rows) - 1) / 2, sets)
    axes[0].set_ylabel("nDCG@10")
    axes[0].legend(fontsize=8)
    axes[1].bar(rows, [results["latency"][r]["batch1_median_ms"] for r in rows], color=["C0", "C1", "C2", "C3"][: len(rows)])
    axes[1].set_ylabel("query encoding, batch 1, median ms (CPU)")
    axes[1].tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "metrics.md").write_text(markdown(results), encoding="utf-8")
    plot(results, out / "metrics.png")
