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
    return Sizes(int(param(encoder, "weights_bytes")), int(param(topk, "index_rows")), dim, param(topk, "index_dtype"),
                 int(resident) if resident else None)


def sustained_step(steps: list[dict], slo_p99_ms: float, max_error_rate: float = 0.001, min_delivered: float = 0.95) -> dict | None:
    """The step with the highest achieved QPS that met the SLO: p99 <= SLO, errors < max_error_rate,
    and at least ``min_delivered`` of the wanted rate delivered (else the server is falling behind).
    The wanted rate is the step's target for open-loop steps, else what was offered."""
    def wanted(s: dict) -> float:
        return s["target"] if s.get("target_unit") == "requests/s" else s["offered_rps"]

    good = [
        s for s in steps
        if s["latency_ms"] and s["latency_ms"]["p99"] <= slo_p99_ms and s["error_rate"] < max_error_rate
        and wanted(s) > 0 and s["achieved_rps"] >= min_delivered * wanted(s)
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
