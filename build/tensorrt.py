"""TensorRT engines for the query encoder, built from the exported ONNX file.

Written against TensorRT 10's documented Python API (``tensorrt.Builder``,
``OnnxParser``, optimization profiles, ``build_serialized_network``, timing caches).
**It has never run in this project's environment**: TensorRT cannot be installed
here (PyPI carries only stubs that download from NVIDIA's index), so
``require_tensorrt`` refuses with instructions instead. Build engines inside NVIDIA's
TensorRT container whose TensorRT matches the Triton container that serves them
(Triton 2.51 = NGC 24.10 = TensorRT 10.5): see docs/gpu.md.

Precision: fp16 by default; int8 with entropy calibration on real query text; fp8
only for an ONNX graph that already carries Q/DQ nodes (explicit quantization, e.g.
from NVIDIA ModelOpt); fp32 for reference. Optimization profiles (min, opt, max for
batch and sequence length) come from the config and must cover what Triton will
send: up to ``max_batch_size`` rows and ``max_tokens`` tokens.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

PRECISIONS = ("fp16", "int8", "fp8", "fp32")
INPUTS = ("input_ids", "attention_mask")


class TensorRTUnavailable(RuntimeError):
    """``import tensorrt`` failed: engines cannot be built on this machine."""


class EngineConfigError(ValueError):
    """An engine setting is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Profile:
    min_batch: int = 1
    opt_batch: int = 16
    max_batch: int = 128
    min_seq: int = 1
    opt_seq: int = 32
    max_seq: int = 256

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        return (self.min_batch, self.min_seq), (self.opt_batch, self.opt_seq), (self.max_batch, self.max_seq)


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    precision: str = "fp16"
    profiles: tuple[Profile, ...] = (Profile(),)
    workspace_gib: float = 4.0
    timing_cache: Path | None = Path("artifacts/trt/timing.cache")
    calibration_batches: int = 16  # int8 only: batches of calibration text, each of the first profile's opt shape


def check_config(config: EngineConfig, max_batch_size: int, max_tokens: int) -> None:
    """Refuse a precision we cannot honour, or profiles that miss shapes Triton will send."""
    if config.precision not in PRECISIONS:
        raise EngineConfigError(f"precision must be one of {list(PRECISIONS)}; got {config.precision!r}")
    if not config.profiles:
        raise EngineConfigError("profiles must hold at least one optimization profile")
    for n, p in enumerate(config.profiles):
        for axis in ("batch", "seq"):
            lo, opt, hi = getattr(p, f"min_{axis}"), getattr(p, f"opt_{axis}"), getattr(p, f"max_{axis}")
            if not 1 <= lo <= opt <= hi:
                raise EngineConfigError(f"profiles[{n}]: need 1 <= min_{axis} <= opt_{axis} <= max_{axis}; got {lo}, {opt}, {hi}")
    top = max(config.profiles, key=lambda p: (p.max_batch, p.max_seq))
    if top.max_batch < max_batch_size:
        raise EngineConfigError(f"profiles: max_batch must be >= the serving max_batch_size {max_batch_size}; got {top.max_batch}")
    if top.max_seq < max_tokens:
        raise EngineConfigError(f"profiles: max_seq must be >= the tower's max_tokens {max_tokens}; got {top.max_seq}")
    if min(p.min_batch for p in config.profiles) > 1 or min(p.min_seq for p in config.profiles) > 1:
        raise EngineConfigError("profiles: some profile must accept a single row of a single token (min_batch = min_seq = 1)")


def require_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            f"TensorRT is not installed here (import tensorrt: {e}). No engine was built. Build engines inside NVIDIA's "
            "TensorRT container matching the serving Triton (Triton 2.51 = nvcr.io/nvidia/tensorrt:24.10-py3, TensorRT 10.5):\n"
            "  docker run --rm --gpus all -v $PWD:/work -w /work nvcr.io/nvidia/tensorrt:24.10-py3 \\\n"
            "    bash -c 'pip install -r deploy/requirements-engine.txt && python -m build engine --precision fp16'\n"
            "(docs/gpu.md)"
        ) from None
    return trt


def _has_qdq(onnx_path: Path) -> bool:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def calibration_batches(texts: Sequence[str], tokenize, profile: Profile, batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokenized real text in batches of exactly the profile's opt shape (opt_batch x opt_seq): TensorRT
    calibrates the int8 scales at the shape the calibration profile optimises for. Longer texts are cut
    at opt_seq, shorter ones padded (mask 0); a last, partial batch is left out."""
    out = []
    for start in range(0, len(texts) - profile.opt_batch + 1, profile.opt_batch):
        if len(out) == batches:
            break
        ids, mask = tokenize(list(texts[start : start + profile.opt_batch]))
        shaped = []
        for a in (ids, mask):
            a = np.asarray(a, dtype=np.int64)[:, : profile.opt_seq]
            shaped.append(np.pad(a, ((0, 0), (0, profile.opt_seq - a.shape[1]))))
        out.append((shaped[0], shaped[1]))
    if not out:
        raise EngineConfigError(f"int8 calibration needs at least opt_batch = {profile.opt_batch} texts; got {len(texts)}")
    return out


def _calibrator(trt, batches: list[tuple[np.ndarray, np.ndarray]], cache: Path):
    """IInt8EntropyCalibrator2 over ``calibration_batches``; device buffers through torch."""
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.chunks = list(batches)
            self.live: dict[str, torch.Tensor] = {}

        def get_batch_size(self):
            return batches[0][0].shape[0]

        def get_batch(self, names):
            if not self.chunks:
                return None
            ids, mask = self.chunks.pop(0)
            self.live = {"input_ids": torch.from_numpy(ids).cuda(), "attention_mask": torch.from_numpy(mask).cuda()}
            return [int(self.live[n].data_ptr()) for n in names]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.exists() else None

        def write_calibration_cache(self, blob):
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(bytes(blob))

    return Calibrator()


def build_engine(onnx_path: Path, plan_path: Path, config: EngineConfig, max_batch_size: int, max_tokens: int,
                 calibration_texts: Sequence[str] = (), tokenize=None) -> dict:
    """ONNX -> serialized engine at ``plan_path``; returns what was built (for render.json)."""
    check_config(config, max_batch_size, max_tokens)
    trt = require_tensorrt()
    if config.precision == "fp8" and not _has_qdq(onnx_path):
        raise EngineConfigError("precision 'fp8' needs an ONNX graph with Q/DQ nodes (explicit quantization, e.g. "
                                f"NVIDIA ModelOpt); {onnx_path} has none")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gib * (1 << 30)))
    if config.precision == "fp16":
        builder_config.set_flag(trt.BuilderFlag.FP16)
    elif config.precision == "int8":
        if not calibration_texts or tokenize is None:
            raise EngineConfigError("precision 'int8' needs calibration text (real queries) and a tokenizer")
        builder_config.set_flag(trt.BuilderFlag.INT8)
        builder_config.set_flag(trt.BuilderFlag.FP16)  # layers int8 cannot take fall back to fp16, not fp32
        builder_config.int8_calibrator = _calibrator(
            trt, calibration_batches(calibration_texts, tokenize, config.profiles[0], config.calibration_batches),
            plan_path.with_suffix(".calib"))
    elif config.precision == "fp8":
        builder_config.set_flag(trt.BuilderFlag.FP8)
        builder_config.set_flag(trt.BuilderFlag.FP16)
    profiles = []
    for p in config.profiles:
        profile = builder.create_optimization_profile()
        lo, opt, hi = p.shapes()
        for name in INPUTS:
            profile.set_shape(name, lo, opt, hi)
        builder_config.add_optimization_profile(profile)
        profiles.append(profile)
    if config.precision == "int8":
        builder_config.set_calibration_profile(profiles[0])  # the profile the calibration batches are shaped for
    cache_blob = config.timing_cache.read_bytes() if config.timing_cache and config.timing_cache.exists() else b""
    timing_cache = builder_config.create_timing_cache(cache_blob)
    builder_config.set_timing_cache(timing_cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}; see the log above")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    if config.timing_cache:
        config.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        config.timing_cache.write_bytes(bytes(builder_config.get_timing_cache().serialize()))
    info = {"tensorrt": trt.__version__, "precision": config.precision, "onnx": str(onnx_path),
            "profiles": [dataclasses.asdict(p) for p in config.profiles], "bytes": plan_path.stat().st_size}
    plan_path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
