"""An opt-in int8 query encoder for the CPU: ONNX Runtime's dynamic quantization of the exported graph.

``quantize_dynamic`` stores the weights of every MatMul as int8, one scale per output channel,
and quantizes activations on the fly; nothing is calibrated, so nothing depends on data. One
scale per tensor was as fast here but moved the embeddings three times as far (mean cosine to
float32 0.973 against 0.994 on the 167 FAQ questions). The
query encoder only: the document index stays as the float tower built it (ScalingNote's
split), so an int8 query is searched against full-precision documents.

The quantized graph is written once per tower, next to its ``model.onnx``
(``model.int8.onnx``, with ``int8.json`` saying how it was made and how far its embeddings
moved on the export's check texts). Its retrieval cost is measured by ``report`` (dev splits
only) and written down in docs/performance.md, next to its speed.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kernels.pooling import Pooling
from model_repository.runtime.encoder import OnnxEncoder
from model_repository.runtime.pipeline import EmbeddingPipeline
from model_repository.runtime.text import TextTokenizer

from .export import ExportedTower

INT8_FILE = "model.int8.onnx"
INT8_INFO = "int8.json"
MIN_COSINE = 0.95  # a graph whose embeddings move further than this on the check texts is refused
SETTINGS = {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8", "per_channel": True}


class QuantizationError(RuntimeError):
    """The quantized graph strays too far from the float one."""


def pipeline(tower: ExportedTower, onnx_file: Path, threads: int = 1) -> EmbeddingPipeline:
    q = tower.info
    tokenizer = TextTokenizer(tower.tokenizer_file, q["max_tokens"], prefix=q.get("prefix", ""), eos_id=q.get("eos_id"))
    return EmbeddingPipeline(tokenizer, OnnxEncoder(onnx_file, threads), Pooling.parse(q["pooling"]))


def quantized_onnx(tower: ExportedTower, check_texts: Sequence[str]) -> Path:
    """``<tower>/model.int8.onnx``, made once; refused when an embedding of ``check_texts`` moves below ``MIN_COSINE``."""
    out, info_file = tower.folder / INT8_FILE, tower.folder / INT8_INFO
    if out.exists() and info_file.exists():
        made = json.loads(info_file.read_text(encoding="utf-8"))
        if {k: made.get(k) for k in SETTINGS} == SETTINGS:
            return out  # made with these settings; else it is made again
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=tower.folder) as tmp:
        staged = Path(tmp) / INT8_FILE
        quantize_dynamic(str(tower.onnx_file), str(staged), weight_type=QuantType.QInt8, per_channel=SETTINGS["per_channel"])
        texts = list(check_texts)
        cosine = (pipeline(tower, tower.onnx_file).embed(texts) * pipeline(tower, staged).embed(texts)).sum(axis=1)
        info = {**SETTINGS, "onnxruntime": onnxruntime.__version__, "source": "model.onnx",
                "check": {"texts": len(texts), "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()),
                          "tolerance_min_cosine": MIN_COSINE}}
        if cosine.min() < MIN_COSINE:
            raise QuantizationError(f"int8 encoder vs float: min cosine must be >= {MIN_COSINE}; got {cosine.min():.4f} ({info['check']})")
        info_file.unlink(missing_ok=True)
        os.replace(staged, out)  # the graph first: the info file says it is complete
        info_file.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def speed(encoders: dict[str, EmbeddingPipeline], texts: list[str], rounds: int = 3,
          on_round: Callable[[int], None] | None = None) -> dict:
    """Side by side, interleaved: per encoder, the median over ``rounds`` of the batch-1 median
    (tokenization included) and of the per-query time in batches of 64, with min and max."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in encoders}
    for r in range(rounds):
        for name in (list(encoders) if r % 2 == 0 else list(encoders)[::-1]):
            p = encoders[name]
            for t in texts[:5]:
                p.embed([t])
            single = []
            for t in texts:
                start = time.perf_counter()
                p.embed([t])
                single.append(time.perf_counter() - start)
            start = time.perf_counter()
            for i in range(0, len(texts), 64):
                p.embed(texts[i : i + 64])
            runs[name].append((statistics.median(single) * 1e3, (time.perf_counter() - start) / len(texts) * 1e3))
        if on_round:
            on_round(r)
    out = {}
    for name, values in runs.items():
        b1, b64 = [v[0] for v in values], [v[1] for v in values]
        out[name] = {"batch1_median_ms": statistics.median(b1), "batch1_min_max_ms": [min(b1), max(b1)],
                     "batch64_ms_per_query": statistics.median(b64), "batch64_min_max_ms": [min(b64), max(b64)]}
    return out


def agreement(a: np.ndarray, b: np.ndarray, docs: np.ndarray, k: int = 10) -> dict:
    """How much the int8 queries change the answer: cosine to the float query, and recall@k of the float top k."""
    from kernels.topk import NumpyTopK

    search = NumpyTopK(docs)
    k = min(k, len(docs))
    (ia, _), (ib, _) = search.search(a, k), search.search(b, k)
    cosine = (a * b).sum(axis=1)
    return {"query_cosine_min": float(cosine.min()), "query_cosine_mean": float(cosine.mean()),
            f"recall@{k}_of_float_answer": float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ia, ib)]))}


def report(query_tower: ExportedTower, doc_tower: Path, sets: list, cache: Path | None, rounds: int = 3,
           latency_queries: int = 200, log: Callable[[str], None] = print) -> dict:
    """Float against int8 query encoder on the given (dev) eval sets: every retrieval measure
    (the doc index as the float doc tower builds it), how far the answers move, and the speed
    in one process pinned to one core, side by side."""
    from model_repository.runtime.files import sha256_file
    from training.data import document_text, read_eval_corpus, read_eval_queries
    from training.evaluate import retrieval_metrics
    from training.towers import Tower, cached_embeddings

    check = [document_text(d) for d in read_eval_corpus(sets[0].corpus)[:24]]
    encoders = {"float32": pipeline(query_tower, query_tower.onnx_file),
                "int8": pipeline(query_tower, quantized_onnx(query_tower, check))}
    result: dict = {"query_tower": query_tower.info["fingerprint"], "doc_tower": str(doc_tower),
                    "int8": json.loads((query_tower.folder / INT8_INFO).read_text(encoding="utf-8")), "sets": {}}
    first_queries: list[str] = []
    for s in sets:
        docs = read_eval_corpus(s.corpus)
        queries = read_eval_queries(s.queries, {d["id"] for d in docs})
        texts = [q["query"] for q in queries]
        first_queries = first_queries or texts
        log(f"{s.name}: {len(docs)} documents, {len(queries)} queries")
        doc_texts, desc = [document_text(d) for d in docs], f"{s.name}: docs"
        doc_emb = cached_embeddings(cache, doc_tower, sha256_file(Path(s.corpus)).encode(),
                                    lambda: Tower.load(doc_tower, "doc tower").encode(doc_texts, 64, desc=desc))  # noqa: B023 - called at once
        emb = {name: p.embed_many(texts, 64) for name, p in encoders.items()}
        ids = [d["id"] for d in docs]
        result["sets"][s.name] = {"split": s.split, "documents": len(docs), "queries": len(queries),
                                  **{name: retrieval_metrics(e, doc_emb, ids, queries) for name, e in emb.items()},
                                  "agreement": agreement(emb["float32"], emb["int8"], doc_emb)}
    log(f"speed: {rounds} interleaved rounds of {latency_queries} queries, one core")
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        result["speed"] = speed(encoders, first_queries[:latency_queries], rounds, lambda r: log(f"  round {r + 1} done"))
    finally:
        os.sched_setaffinity(0, allowed)
    result["speed"]["cpu"] = min(allowed)
    result["speed"]["threads"] = 1
    return result


def markdown(result: dict) -> str:
    lines = ["| set | queries | nDCG@10 float32 | nDCG@10 int8 | int8 / float32 | MRR@10 float32 / int8 | R@10 float32 / int8 "
             "| int8 keeps of the float top 10 | query cosine min / mean |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in result["sets"].items():
        f, q, a = s["float32"], s["int8"], s["agreement"]
        lines.append(f"| {name} | {s['queries']} | {f['nDCG@10']:.4f} {f['nDCG@10_ci95']} | {q['nDCG@10']:.4f} {q['nDCG@10_ci95']} "
                     f"| {q['nDCG@10'] / f['nDCG@10']:.4f} | {f['MRR@10']:.4f} / {q['MRR@10']:.4f} | {f['R@10']:.4f} / {q['R@10']:.4f} "
                     f"| {a['recall@10_of_float_answer']:.3f} | {a['query_cosine_min']:.3f} / {a['query_cosine_mean']:.4f} |")
    sp = result["speed"]
    lines += ["", "| encoder (one core, one thread, tokenization included) | batch 1 median ms (min–max of rounds) "
              "| batch 64, ms per query (min–max) |", "|---|---|---|"]
    for name in ("float32", "int8"):
        v = sp[name]
        lines.append(f"| {name} | {v['batch1_median_ms']:.2f} ({v['batch1_min_max_ms'][0]:.2f}–{v['batch1_min_max_ms'][1]:.2f}) "
                     f"| {v['batch64_ms_per_query']:.2f} ({v['batch64_min_max_ms'][0]:.2f}–{v['batch64_min_max_ms'][1]:.2f}) |")
    lines.append(f"\nint8 speed-up: batch 1 {sp['float32']['batch1_median_ms'] / sp['int8']['batch1_median_ms']:.2f}x, "
                 f"batch 64 {sp['float32']['batch64_ms_per_query'] / sp['int8']['batch64_ms_per_query']:.2f}x")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> Path:
    from model_repository.runtime.provenance import pyplot, save_figure

    plt = pyplot()
    names = list(result["sets"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(names))
    for i, flavour in enumerate(("float32", "int8")):
        values = [result["sets"][n][flavour]["nDCG@10"] for n in names]
        errors = np.array([[v - result["sets"][n][flavour]["nDCG@10_ci95"][0], result["sets"][n][flavour]["nDCG@10_ci95"][1] - v]
                           for n, v in zip(names, values)]).T
        ax.bar(x + (i - 0.5) * 0.38, values, 0.38, yerr=errors, capsize=3, label=flavour)
    ax.set_xticks(x, names)
    ax.set_ylabel("nDCG@10 (95% bootstrap interval)")
    ax.set_title("query encoder: float32 against int8 (dev splits)")
    ax.legend()
    sp = result["speed"]
    for i, key in enumerate(("batch1_median_ms", "batch64_ms_per_query")):
        ax2.bar([i - 0.19, i + 0.19], [sp["float32"][key], sp["int8"][key]], 0.38, color=["C0", "C1"])
    ax2.set_xticks([0, 1], ["batch 1, median ms", "batch 64, ms per query"])
    ax2.set_title("speed, one core (float32 left, int8 right)")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path
