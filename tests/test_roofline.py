"""The roofline capacity model: its arithmetic by hand, and its CPU calibration run end to end."""
from __future__ import annotations

import json

import pytest

from benchmarks.capacity import roofline
from benchmarks.__main__ import main as bench_main
from tests.conftest import ARTIFACTS


def test_encoder_flops_by_hand():
    tower = roofline.Tower(layers=2, hidden=4, intermediate=8, parameters=0)
    # per layer and token: 2 * (4*16 + 2*4*8) + 4*T*H = 2 * 128 + 4*3*4 = 304; x 2 layers x 3 tokens
    assert tower.flops_per_query(3) == 2 * 3 * 304
    minilm = roofline.TOWERS["minilm"].flops_per_query(16)
    assert 330e6 < minilm < 345e6  # ~21 MFLOP per token for all-MiniLM-L6-v2


def test_topk_is_bound_by_reading_the_index_at_small_batches_and_by_its_gemm_at_large():
    h100, a = roofline.DEVICES["H100"], roofline.Assumptions()
    one = roofline.topk_ms(h100, 1_000_000, 768, 2, 1, a)
    assert one == pytest.approx(1e3 * 1_000_000 * 768 * 2 / (3.35e12 * 0.8))  # 0.57 ms: one read of 1.5 GB
    assert roofline.topk_ms(h100, 1_000_000, 768, 2, 32, a) == pytest.approx(one)  # still the read
    assert roofline.topk_ms(h100, 1_000_000, 768, 2, 4096, a) > one  # the GEMM takes over


def test_qps_and_memory_fit():
    a = roofline.Assumptions()
    h100, minilm = roofline.DEVICES["H100"], roofline.TOWERS["minilm"]
    rows = [roofline.qps(h100, minilm, 1_000_000, 384, b, 16, a) for b in (1, 8, 32, 128)]
    assert all(r["batch_ms"] == pytest.approx(r["encoder_ms"] + r["topk_ms"] + r["overhead_ms"]) for r in rows)
    assert [r["qps"] for r in rows] == sorted(r["qps"] for r in rows)  # batching amortises the index read
    fit = roofline.memory_fit(roofline.DEVICES["L4"], roofline.TOWERS["bert-base"], 100_000_000, 768, "fp16", a)
    assert fit["index_gib"] == pytest.approx(100_000_000 * 768 * 2 / 2**30)
    free = 24e9 - 110e6 * 2 - 4 * 2**30
    assert fit["gpus_for_index"] == -(-100_000_000 * 768 * 2 // int(free))
    assert roofline.index_bytes(10, 384, "int8") == 10 * 388 and roofline.index_bytes(10, 384, "matryoshka:128") == 10 * 256
    with pytest.raises(ValueError, match="index kind must be"):
        roofline.index_bytes(10, 384, "int4")


def test_roofline_command_calibrates_on_this_cpu(repository, tmp_path):
    out = tmp_path / "roofline.json"
    kernels = tmp_path / "gpu-kernels.json"
    kernels.write_text(json.dumps({"topk": [{"n": 1000, "d": 64, "batch": 4, "k": 10, "torch_ms": 0.5}]}))
    assert bench_main(["roofline", "--calibrate", "--calibration-rows", "20000", "--repository", str(repository),
                       "--queries", str(ARTIFACTS / "corpus" / "python-docs" / "queries.jsonl"), "--out", str(out),
                       "--gpu-kernels", str(kernels), "--device", "H100"]) == 0
    result = json.loads(out.read_text())
    assert set(result["devices"]) == {"H100", "H200", "A100", "L4"}
    cal = result["cpu_calibration"]
    for part in ("encoder", "topk"):
        assert cal[part]["measured_ms"] > 0 and 0.01 < cal[part]["predicted_over_measured"] < 100
    (comparison,) = result["gpu_topk_comparison"]
    assert comparison["implementation"] == "torch" and comparison["measured_ms"] == 0.5
    assert "predicted / measured" in out.with_suffix(".md").read_text()
