"""Capacity planning: from a measured load sweep to replicas and memory per replica.

Pure arithmetic (unit-tested) plus reading the deployed sizes from the server over gRPC.
"""
from __future__ import annotations

import dataclasses
import math

DTYPE_BYTES = {"float16": 2, "float32": 4, "int8": 1}
GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Sizes:
    encoder_bytes: int  # the query-encoder engine or ONNX file
    index_rows: int
    dim: int
    index_dtype: str
    index_resident: int | None = None  # what the served search holds (the config's index_resident_bytes)

    @property
    def index_bytes(self) -> int:
        if self.index_resident is not None:
            return self.index_resident
        return self.index_rows * self.dim * DTYPE_BYTES[self.index_dtype]


def sizes_from_server(grpc_url: str) -> Sizes:
    from clients.retrieval import RetrievalClient

    with RetrievalClient(grpc_url) as client:
        encoder = client.model_config("query_encoder")
        topk = client.model_config("mips_topk")
    param = lambda config, key: config["parameters"][key]["string_value"]  # noqa: E731
    dim = int(next(i for i in topk["input"] if i["name"] == "embedding")["dims"][0])
    resident = topk["parameters"].get("index_resident_bytes", {}).get("string_value")
    # --search-step encoder: the encoder's stub holds a second copy of the index, the one retrieve searches
    extra = encoder["parameters"].get("index_resident_bytes", {}).get("string_value")
    return Sizes(int(param(encoder, "weights_bytes")), int(param(topk, "index_rows")), dim, param(topk, "index_dtype"),
                 int(resident) + int(extra or 0) if resident else None)


def sustained_step(steps: list[dict], slo_p99_ms: float, max_error_rate: float = 0.001, min_delivered: float = 0.95) -> dict | None:
    """The step with the highest achieved QPS that met the SLO: p99 <= SLO, errors < max_error_rate,
    and at least ``min_delivered`` of the wanted rate delivered (else the server is falling behind),
    less what Poisson arrivals may fall short by chance.
    The wanted rate is the step's target for open-loop steps, else what was offered."""
    def wanted(s: dict) -> float:
        return s["target"] if s.get("target_unit") == "requests/s" else s["offered_rps"]

    def delivered(s: dict) -> float:
        """The share of the wanted rate that must arrive. Open-loop arrivals are Poisson: over a step
        that expects n of them, a shortfall within 3 standard deviations (3 / sqrt(n)) is the
        arrivals' own chance, not a server falling behind (2,000 expected: 6.7%)."""
        expected = wanted(s) * s.get("duration_s", 0) if s.get("target_unit") == "requests/s" else 0
        return min(min_delivered, 1 - 3 / math.sqrt(expected)) if expected > 0 else min_delivered

    good = [
        s for s in steps
        if s["latency_ms"] and s["latency_ms"]["p99"] <= slo_p99_ms and s["error_rate"] < max_error_rate
        and wanted(s) > 0 and s["achieved_rps"] >= delivered(s) * wanted(s)
    ]
    return max(good, key=lambda s: s["achieved_rps"], default=None)


def replicas_needed(target_qps: float, sustained_qps: float, headroom: float) -> int:
    """Replicas so that each runs at most at sustained_qps / (1 + headroom)."""
    if sustained_qps <= 0:
        raise ValueError(f"sustained QPS must be > 0; got {sustained_qps}")
    if headroom < 0:
        raise ValueError(f"headroom must be >= 0; got {headroom}")
    return max(1, math.ceil(target_qps * (1 + headroom) / sustained_qps - 1e-9))


def memory_per_replica(sizes: Sizes, workspace_bytes: int, device_bytes: int) -> dict:
    """Engine + index + workspace on one device; how many devices the index needs if it does not fit."""
    free_for_index = device_bytes - sizes.encoder_bytes - workspace_bytes
    if free_for_index <= 0:
        raise ValueError(
            f"engine ({sizes.encoder_bytes / GIB:.2f} GiB) plus workspace ({workspace_bytes / GIB:.2f} GiB) "
            f"exceed the device memory ({device_bytes / GIB:.2f} GiB)"
        )
    shards = max(1, math.ceil(sizes.index_bytes / free_for_index))
    return {
        "engine_bytes": sizes.encoder_bytes,
        "index_bytes": sizes.index_bytes,
        "index_shard_bytes": math.ceil(sizes.index_bytes / shards),
        "workspace_bytes": workspace_bytes,
        "total_bytes": sizes.encoder_bytes + sizes.index_bytes + workspace_bytes,
        "index_fits_one_device": shards == 1,
        "devices_for_index": shards,
    }


def plan(steps: list[dict], slo_p99_ms: float, target_qps: float, headroom: float,
         sizes: Sizes, workspace_bytes: int, device_bytes: int) -> dict:
    best = sustained_step(steps, slo_p99_ms)
    memory = memory_per_replica(sizes, workspace_bytes, device_bytes)
    result = {
        "slo_p99_ms": slo_p99_ms, "target_qps": target_qps, "headroom": headroom,
        "sustained_qps": best["achieved_rps"] if best else 0.0,
        "sustained_step": best["index"] if best else None,
        "replicas": None, "devices": None, "memory": memory,
    }
    if best:
        result["replicas"] = replicas_needed(target_qps, best["achieved_rps"], headroom)
        result["devices"] = result["replicas"] * memory["devices_for_index"]
    return result


def search_capacity(measure, slo_p99_ms: float, start_rps: float, factor: float = 1.5, refine: int = 2,
                    max_rps: float = 1000.0, min_rps: float = 1.0) -> dict:
    """The highest open-loop rate that holds the SLO, found by measuring: ``measure(rate)`` runs one
    open-loop step at ``rate`` requests/s and returns its step dict; a step holds when
    ``sustained_step`` accepts it (p99 <= SLO, errors < 0.1%, the rate delivered: >= 95%, or within
    3 standard deviations of its Poisson count).

    Up from ``start_rps`` by ``factor`` while the SLO holds (down by ``factor`` if the start fails),
    then ``refine`` geometric bisections between the highest rate that held and the lowest that
    failed, so the answer is within ``factor ** (1 / 2 ** refine)`` of the edge. Every point is kept,
    in the order it ran."""
    if factor <= 1 or start_rps <= 0 or min_rps <= 0:
        raise ValueError(f"need factor > 1, start_rps > 0 and min_rps > 0; got {factor}, {start_rps}, {min_rps}")
    points: list[dict] = []

    def holds(rate: float) -> bool:
        step = measure(rate)
        ok = sustained_step([step], slo_p99_ms) is not None
        points.append({"rate_rps": rate, "held": ok, "p99_ms": (step["latency_ms"] or {}).get("p99"),
                       "achieved_rps": step["achieved_rps"], "failed": step.get("failed", 0), "step": step})
        return ok

    held = failed = None
    if holds(start_rps):
        held = start_rps
        while held * factor <= max_rps:
            if not holds(rate := round(held * factor, 2)):
                failed = rate
                break
            held = rate
    else:
        failed = start_rps
        while failed / factor >= min_rps:
            rate = round(failed / factor, 2)
            if holds(rate):
                held = rate
                break
            failed = rate
    if held is not None and failed is not None:
        for _ in range(refine):
            rate = round(math.sqrt(held * failed), 2)
            if holds(rate):
                held = rate
            else:
                failed = rate
    best = max((p for p in points if p["held"]), key=lambda p: p["rate_rps"], default=None)
    return {"slo_p99_ms": slo_p99_ms, "capacity_rps": held, "capacity_achieved_rps": best["achieved_rps"] if best else None,
            "lowest_failed_rps": failed, "factor": factor, "refine": refine, "points": points}
