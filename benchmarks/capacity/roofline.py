"""A roofline capacity model for GPUs you do not have yet, calibrated where you can measure.

Users size fleets before they own the hardware. From published spec figures (dense
fp16/bf16 tensor FLOP/s, HBM bandwidth, memory) the model predicts, per GPU:

- the query encoder's time per batch from its FLOPs (a BERT-style tower: per layer and
  token ``2 (4 H^2 + 2 H I)`` for the projections and MLP, plus ``4 T H`` for attention),
  at ``tensor_efficiency`` of the peak;
- the exact top-k's time per batch from the index bytes it reads once per batch, at
  ``memory_efficiency`` of the bandwidth (or from its GEMM FLOPs, whichever is slower);
- a fixed ``overhead_ms`` per batch (ensemble hops, python backend, launches);
- QPS = batch / (encoder + top-k + overhead), and the memory fit of fp16, int8 and
  Matryoshka indexes at 1M, 10M and 100M documents (GPUs needed to hold the index).

Every assumption is printed with the answer. ``calibrate_cpu`` measures this machine's
GEMM FLOP/s and copy bandwidth, predicts the encoder and the top-k with the same
formulas, measures both in-process, and reports predicted / measured; when GPU
measurements arrive (the gpu-suite's ``gpu-kernels.json``), ``compare_topk`` does the same
for the top-k there.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from benchmarks.common import median_seconds

GB = 1e9
GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    tensor_flops: float  # dense fp16/bf16, FLOP/s
    bandwidth: float  # HBM bytes/s
    memory_bytes: float
    source: str


# Published dense (no sparsity) figures of the SXM parts unless named otherwise.
DEVICES = {
    "H100": Device("H100 SXM", 989.4e12, 3.35e12, 80 * GB, "NVIDIA H100 datasheet: 989 TFLOPS fp16 dense, 3.35 TB/s, 80 GB"),
    "H200": Device("H200 SXM", 989.4e12, 4.8e12, 141 * GB, "NVIDIA H200 datasheet: 989 TFLOPS fp16 dense, 4.8 TB/s, 141 GB"),
    "A100": Device("A100 SXM 80GB", 312e12, 2.039e12, 80 * GB, "NVIDIA A100 datasheet: 312 TFLOPS fp16 dense, 2.039 TB/s, 80 GB"),
    "L4": Device("L4", 121e12, 0.3e12, 24 * GB, "NVIDIA L4 datasheet: 121 TFLOPS fp16 dense, 300 GB/s, 24 GB"),
}


@dataclasses.dataclass(frozen=True)
class Tower:
    layers: int
    hidden: int
    intermediate: int
    parameters: int

    def flops_per_query(self, tokens: int) -> float:
        per_layer_token = 2 * (4 * self.hidden**2 + 2 * self.hidden * self.intermediate) + 4 * tokens * self.hidden
        return self.layers * tokens * per_layer_token


TOWERS = {
    "minilm": Tower(6, 384, 1536, 22_700_000),
    "bert-base": Tower(12, 768, 3072, 110_000_000),
}


@dataclasses.dataclass(frozen=True)
class Assumptions:
    tensor_efficiency: float = 0.35  # of peak tensor FLOP/s at serving batch sizes
    memory_efficiency: float = 0.8  # of peak bandwidth for a streaming index scan
    overhead_ms: float = 0.5  # per batch: ensemble hops, python backend, kernel launches
    workspace_bytes: float = 4 * GIB  # activations, CUDA context, allocator slack
    weight_bytes_per_parameter: int = 2  # fp16


def encoder_ms(device: Device, tower: Tower, batch: int, tokens: int, a: Assumptions) -> float:
    return 1e3 * batch * tower.flops_per_query(tokens) / (device.tensor_flops * a.tensor_efficiency)


def topk_ms(device: Device, rows: int, dim: int, bytes_per_value: float, batch: int, a: Assumptions,
            flops: float | None = None) -> float:
    """One batch: the index read once, or its GEMM, whichever takes longer."""
    read = rows * dim * bytes_per_value / (device.bandwidth * a.memory_efficiency)
    gemm = 2 * batch * rows * dim / ((flops or device.tensor_flops) * a.tensor_efficiency)
    return 1e3 * max(read, gemm)


def qps(device: Device, tower: Tower, rows: int, dim: int, batch: int, tokens: int, a: Assumptions) -> dict:
    enc, search = encoder_ms(device, tower, batch, tokens, a), topk_ms(device, rows, dim, 2, batch, a)
    total = enc + search + a.overhead_ms
    return {"batch": batch, "encoder_ms": enc, "topk_ms": search, "overhead_ms": a.overhead_ms, "batch_ms": total,
            "qps": batch / total * 1e3, "bound": max(("encoder", enc), ("top-k", search), ("overhead", a.overhead_ms),
                                                     key=lambda x: x[1])[0]}


def index_bytes(rows: int, dim: int, kind: str) -> int:
    """Resident bytes of the search structure (the serving runtime's resident_bytes, by kind)."""
    if kind == "fp16":
        return rows * dim * 2
    if kind == "int8":
        return rows * (dim + 4)
    if kind.startswith("matryoshka:"):
        return rows * int(kind.split(":")[1]) * 2
    raise ValueError(f"index kind must be fp16, int8 or matryoshka:<d>; got {kind!r}")


def memory_fit(device: Device, tower: Tower, rows: int, dim: int, kind: str, a: Assumptions) -> dict:
    free = device.memory_bytes - tower.parameters * a.weight_bytes_per_parameter - a.workspace_bytes
    need = index_bytes(rows, dim, kind)
    return {"rows": rows, "kind": kind, "index_gib": need / GIB, "free_gib_per_gpu": free / GIB,
            "gpus_for_index": max(1, math.ceil(need / free))}


def report(device_names=("H100", "H200", "A100", "L4"), tower_name: str = "minilm", dim: int = 384, rows: int = 1_000_000,
           tokens: int = 16, batches=(1, 8, 32, 128), a: Assumptions = Assumptions()) -> dict:
    tower = TOWERS[tower_name]
    out = {"assumptions": dataclasses.asdict(a), "tower": {"name": tower_name, **dataclasses.asdict(tower)},
           "index": {"rows": rows, "dim": dim}, "tokens_per_query": tokens, "devices": {}}
    for name in device_names:
        device = DEVICES[name]
        out["devices"][name] = {
            "spec": dataclasses.asdict(device),
            "throughput": [qps(device, tower, rows, dim, b, tokens, a) for b in batches],
            "memory_fit": [memory_fit(device, tower, n, dim, kind, a) for n in (1_000_000, 10_000_000, 100_000_000)
                           for kind in ("fp16", "int8", "matryoshka:128")],
        }
    return out


def calibrate_cpu(encoder, queries_ids: tuple[np.ndarray, np.ndarray], tower: Tower, rows: int = 100_000, dim: int = 384,
                  batch: int = 64, repeats: int = 5) -> dict:
    """This CPU as a 'device' (measured GEMM FLOP/s and copy bandwidth), the same formulas, and measurements beside them.

    ``encoder``: the ONNX encoder callable (ids, mask) -> hidden states; ``queries_ids``: a tokenized batch."""
    def best(fn) -> float:
        return median_seconds(fn, repeats, warmup=1)

    rng = np.random.default_rng(0)
    m = rng.standard_normal((1024, 1024), dtype=np.float32)
    flops = 2 * 1024**3 / best(lambda: m @ m)
    big = rng.standard_normal(16 * 1024 * 1024 // 4 * 8, dtype=np.float32)  # 128 MiB
    dst = np.empty_like(big)
    bandwidth = 2 * big.nbytes / best(lambda: np.copyto(dst, big))
    cpu = Device("this CPU (measured)", flops, bandwidth, 0, "measured: numpy 1024^3 GEMM fp32, 128 MiB copy")
    a = Assumptions(tensor_efficiency=1.0, memory_efficiency=1.0, overhead_ms=0.0)  # measured peaks, no slack
    ids, mask = queries_ids
    tokens = int(mask.sum(axis=1).mean())
    predicted_enc = encoder_ms(cpu, tower, ids.shape[0], ids.shape[1], a)
    measured_enc = 1e3 * best(lambda: encoder(ids, mask))
    index = rng.standard_normal((rows, dim), dtype=np.float32)
    q = rng.standard_normal((batch, dim), dtype=np.float32)
    predicted_topk = topk_ms(cpu, rows, dim, 4, batch, a, flops=flops)
    measured_topk = 1e3 * best(lambda: np.argpartition(-(q @ index.T), 10, axis=1)[:, :10])
    return {"device": dataclasses.asdict(cpu), "tokens_per_query_mean": tokens,
            "encoder": {"batch": int(ids.shape[0]), "padded_tokens": int(ids.shape[1]), "predicted_ms": predicted_enc,
                        "measured_ms": measured_enc, "predicted_over_measured": predicted_enc / measured_enc},
            "topk": {"rows": rows, "dim": dim, "batch": batch, "k": 10, "predicted_ms": predicted_topk,
                     "measured_ms": measured_topk, "predicted_over_measured": predicted_topk / measured_topk},
            "note": "predicted with the measured peaks and efficiency 1.0: the ratio is the efficiency this machine reaches"}


def compare_topk(kernels: dict, device_name: str, a: Assumptions = Assumptions()) -> list[dict]:
    """Predicted against measured top-k from a gpu-kernels result (same index, batch, k)."""
    device = DEVICES[device_name]
    out = []
    for row in kernels["topk"]:
        measured = {k[: -len("_ms")]: v for k, v in row.items() if k in ("torch_ms", "cupy_ms")}
        predicted = topk_ms(device, row["n"], row["d"], 2, row["batch"], a)
        for name, ms in measured.items():
            out.append({"implementation": name, "batch": row["batch"], "k": row["k"], "predicted_ms": predicted,
                        "measured_ms": ms, "predicted_over_measured": predicted / ms})
    return out


def markdown(result: dict, calibration: dict | None) -> str:
    a = result["assumptions"]
    lines = ["# Roofline capacity model (predicted, not measured)", "",
             f"Tower `{result['tower']['name']}` ({result['tower']['parameters'] / 1e6:.1f} M parameters), "
             f"{result['tokens_per_query']} tokens per query; index {result['index']['rows']:,} x {result['index']['dim']} fp16.",
             f"Assumptions: tensor efficiency {a['tensor_efficiency']}, memory efficiency {a['memory_efficiency']}, "
             f"overhead {a['overhead_ms']} ms per batch, workspace {a['workspace_bytes'] / GIB:.0f} GiB, fp16 weights.", "",
             "| GPU | batch | encoder ms | top-k ms | overhead ms | QPS | bound by |", "|---|---|---|---|---|---|---|"]
    for name, d in result["devices"].items():
        for t in d["throughput"]:
            lines.append(f"| {name} | {t['batch']} | {t['encoder_ms']:.3f} | {t['topk_ms']:.3f} | {t['overhead_ms']:.2f} "
                         f"| {t['qps']:,.0f} | {t['bound']} |")
    lines += ["", "| GPU | documents | index | GiB | GPUs to hold it |", "|---|---|---|---|---|"]
    for name, d in result["devices"].items():
        for f in d["memory_fit"]:
            lines.append(f"| {name} | {f['rows']:,} | {f['kind']} | {f['index_gib']:.1f} | {f['gpus_for_index']} |")
    lines += ["", "Spec sources: " + "; ".join(d["spec"]["source"] for d in result["devices"].values())]
    if calibration:
        e, t = calibration["encoder"], calibration["topk"]
        lines += ["", "## Calibration on this CPU (same formulas, measured peaks)", "",
                  f"Measured peaks: {calibration['device']['tensor_flops'] / 1e9:.1f} GFLOP/s (fp32 GEMM), "
                  f"{calibration['device']['bandwidth'] / 1e9:.1f} GB/s (copy).", "",
                  "| part | predicted ms | measured ms | predicted / measured |", "|---|---|---|---|",
                  f"| encoder, batch {e['batch']} x {e['padded_tokens']} tokens | {e['predicted_ms']:.2f} | {e['measured_ms']:.2f} "
                  f"| {e['predicted_over_measured']:.2f} |",
                  f"| top-k, {t['rows']:,} x {t['dim']} fp32, batch {t['batch']} | {t['predicted_ms']:.2f} | {t['measured_ms']:.2f} "
                  f"| {t['predicted_over_measured']:.2f} |", "", calibration["note"] + "."]
    return "\n".join(lines) + "\n"
