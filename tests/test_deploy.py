"""Versioned index deployment: hot swaps under load, refusal of a bad index, rollback.

The server runs on a hard-linked copy of the built repository with explicit model
control (the launcher's default). Index B is a second index paired with the same
query tower, encoded from the first 300 documents of the corpus.
"""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from build import deploy
from training.corpus import read_corpus
from build.export import ExportedTower
from build.index import build_index
from clients.retrieval import RetrievalClient
from kernels.topk import NumpyTopK
from model_repository.runtime.index import IndexMismatch, load_index
from tests.conftest import ARTIFACTS, linked_copy, start_server
from tests.traffic import Traffic, write_result

K = 5
CLIENTS = 8
RUN_S = 20.0
# Bound on any call within 2 s of a swap: loading the new index takes the same 2 cores that serve (calm p99 ~150 ms).
SWAP_MAX_MS = 1500.0


@pytest.fixture(scope="module")
def indexes(repository, render_info, tmp_path_factory) -> dict[str, object]:
    a = ARTIFACTS / "index" / render_info.index["index_version"]
    docs = read_corpus(ARTIFACTS / "corpus" / "python-docs" / "corpus.jsonl")[:300]
    doc_tower = ExportedTower(ARTIFACTS / "towers" / render_info.index["doc_tower_fingerprint"])
    b = build_index(docs, "first-300-documents", doc_tower, render_info.query_tower["fingerprint"],
                    tmp_path_factory.mktemp("index-b"))
    return {"A": a, "B": b}


@pytest.fixture(scope="module")
def deployment(repository, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    repo = linked_copy(repository, root)
    server = start_server(repo, root / "work")
    yield repo, server
    server.stop()


@pytest.fixture(scope="module")
def expected(indexes, pipeline, queries) -> dict:
    """In-process answers, per index version: query -> (keys, scores)."""
    texts = queries[:16]
    emb = pipeline.embed(texts)
    out = {}
    for folder in indexes.values():
        index = load_index(folder, json.loads((folder / "manifest.json").read_text())["query_tower_fingerprint"])
        ids, scores = NumpyTopK(index.embeddings).search(emb, K)
        out[index.version] = {t: ([index.keys[i] for i in row], s) for t, row, s in zip(texts, ids, scores)}
    return out


def _matches(keys, scores, want_keys, want_scores) -> bool:
    """Same documents in the same order; a swap of two scores within 1e-4 (batch padding noise) is allowed."""
    return all(k == wk or abs(s - ws) < 1e-4 for k, s, wk, ws in zip(keys, scores, want_keys, want_scores))


def _lifecycle(server) -> str:
    """The model loads and unloads in the server's log (wall-clock stamped)."""
    keep = ("loading:", "successfully", "unload", "ModelInstance", "mips_topk:")
    log = server.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(line[:200] for line in log if any(k in line for k in keep))[-20000:]


def test_index_swaps_under_load_lose_nothing(deployment, indexes, expected):
    """8 clients, two swaps: no failed call, every answer matches the index it reports, and the latency
    users feel around each swap (max and p99 within 2 s of it) is bounded and written down."""
    repo, server = deployment
    texts = list(next(iter(expected.values())))

    def call(client, i):
        text = texts[i % len(texts)]
        r = client.retrieve([text], k=K)
        return text, r.index_version, [h.key for h in r.hits[0]], [h.score for h in r.hits[0]]

    timeline = []
    with Traffic(server.grpc_url, call, clients=CLIENTS) as traffic:
        start = time.monotonic()
        for at, name in ((5.0, "B"), (12.0, "A")):
            time.sleep(max(0.0, start + at - time.monotonic()))
            swap_at = time.monotonic()
            version = deploy.deploy_index(repo, indexes[name], server.grpc_url)
            timeline.append((version, deploy.index_of_version(repo, version), swap_at, time.monotonic()))
        time.sleep(max(0.0, start + RUN_S - time.monotonic()))
    swaps = [{"version": v, "deploy_s": round(done - at, 2), **traffic.summary(at, window_s=2.0)} for v, _, at, done in timeline]
    write_result("index-hot-swap", {"swaps": swaps, **traffic.summary()})
    assert not traffic.failures, f"{len(traffic.failures)} of {len(traffic.calls)} requests failed: {traffic.failures[:3]}"
    assert [v for v, *_ in timeline] == [2, 3] and deploy.versions(repo) == [1, 2, 3]
    answers = [c.value for c in traffic.calls]
    seen = {v for _, v, _, _ in answers}
    assert seen == set(expected), f"answers came from {seen}; deployed {timeline}"
    wrong = [(t, v) for t, v, keys, scores in answers if not _matches(keys, scores, *expected[v][t])]
    assert not wrong, f"{len(wrong)} responses do not match the index version they report: {wrong[:3]}"
    assert len(answers) > 100
    assert deploy.serving_version(server.grpc_url) == 3
    # What users feel: a call that takes seconds but succeeds is an outage too. A failure says whether the
    # slow call was stuck alone (others completed meanwhile) or everything stalled, and what the server did.
    for swap, (_, _, at, _) in zip(swaps, timeline):
        slow = traffic.slow(SWAP_MAX_MS, at - 2.0, at + 2.0, answer=lambda value: value[1])  # the index version
        assert not slow, (f"swap to version {swap['version']} (deploy {swap['deploy_s']} s): {len(slow)} calls over "
                          f"{SWAP_MAX_MS:.0f} ms: {slow[:8]}\nserver log:\n{_lifecycle(server)}")


def test_a_corrupt_or_mismatched_index_is_refused_and_the_old_version_keeps_serving(deployment, indexes, tmp_path):
    repo, server = deployment
    before = deploy.versions(repo)
    serving = deploy.index_of_version(repo, before[-1])
    bad = tmp_path / "bad"
    shutil.copytree(indexes["B"], bad)
    shard = bad / "shard-00000.npy"
    a = np.load(shard)
    a[0, 0] += np.float16(0.5)
    np.save(shard, a)
    # The deploy tool checks checksums itself and touches nothing.
    with pytest.raises(IndexMismatch, match=r"shard-00000.npy: sha256 must be"):
        deploy.deploy_index(repo, bad, server.grpc_url)
    # The server refuses it too (the tool's check skipped), and the old version keeps serving. Readiness
    # stays true: the tool republishes the serving files under the failed number (Triton keeps the record
    # of a failed version, which alone would make strict readiness false while every request succeeds).
    with pytest.raises(deploy.DeployError, match=r"(?s)sha256 must be.*version %d kept serving.*reports ready" % before[-1]):
        deploy.deploy_index(repo, bad, server.grpc_url, verify=False)
    assert server.is_ready(), "a refused deploy took the server out of readiness"
    assert deploy.versions(repo) == [*before, before[-1] + 1]
    assert deploy.index_of_version(repo, before[-1] + 1) == serving
    before = deploy.versions(repo)
    with RetrievalClient(server.grpc_url) as c:
        assert c.retrieve(["how do I copy a file"], k=3).index_version == serving
    # An index paired with another query tower is refused before anything changes.
    other = tmp_path / "other"
    shutil.copytree(indexes["B"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "query_tower_fingerprint": "0123456789abcdef"}))
    with pytest.raises(IndexMismatch, match=r"pairs with query tower 0123456789abcdef, but this repository serves"):
        deploy.deploy_index(repo, other, server.grpc_url)
    assert deploy.versions(repo) == before


def test_rollback_is_one_command(deployment, indexes):
    from build.__main__ import main as build_main

    repo, server = deployment
    current = deploy.versions(repo)
    assert build_main(["rollback", "--repository", str(repo), "--url", server.grpc_url]) == 0
    assert deploy.versions(repo) == current[:-1]
    previous = deploy.index_of_version(repo, current[-2])
    with RetrievalClient(server.grpc_url) as c:
        assert c.retrieve(["how do I copy a file"], k=3).index_version == previous
    log = [json.loads(line) for line in (repo.parent / "repo.deploy" / "deployments.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log][-1] == "rollback"


# A deploy run in a child process that dies at one step: SIGKILL, or the disk full from then on (writes
# fail with EFBIG under RLIMIT_FSIZE, which needs no root, unlike a small tmpfs).
_INTERRUPTED = r"""
import os, resource, signal, sys
from pathlib import Path
from build import deploy

step, repo, index, url = sys.argv[1:]
def die():
    if step.startswith("full-disk"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    else:
        os.kill(os.getpid(), signal.SIGKILL)
def before(name, at):
    real = getattr(deploy, name)
    def wrapped(*a, **k):
        if at == "before":
            die()
        out = real(*a, **k)
        if at == "after" and (name != "atomic_write_text" or Path(a[0]).name == "pending.json"):
            die()
        return out
    setattr(deploy, name, wrapped)
where = {"marker": ("atomic_write_text", "after"), "config": ("_write_config_for", "before"),
         "load": ("_load", "before"), "switched": ("_load", "after"), "full-disk-config": ("_write_config_for", "before")}
before(*where[step])
deploy.deploy_index(Path(repo), Path(index), url)
"""


def _restart_would_load(repo) -> int:
    """The version a restarted server loads: the one config.pbtxt pins, checked against its folder's index."""
    from build.render import parse_model_config

    config = parse_model_config((repo / deploy.MODEL / "config.pbtxt").read_text(encoding="utf-8"))
    (version,) = config.version_policy.specific.versions
    manifest = json.loads((repo / deploy.MODEL / str(version) / "index" / "manifest.json").read_text(encoding="utf-8"))
    assert config.parameters["index_rows"].string_value == str(manifest["count"])
    return version


@pytest.mark.parametrize("step", ["marker", "config", "load", "switched", "full-disk-config"])
def test_a_deploy_interrupted_midway_changes_nothing_served_and_the_next_one_succeeds(deployment, indexes, step):
    import subprocess
    import sys

    from tests.conftest import ROOT

    repo, server = deployment
    serving = deploy.serving_version(server.grpc_url)
    target = "B" if deploy.index_of_version(repo, serving) == load_index_version(indexes["A"]) else "A"
    child = subprocess.run([sys.executable, "-c", _INTERRUPTED, step, str(repo), str(indexes[target]), server.grpc_url],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode != 0, child.stdout + child.stderr
    if step.startswith("full-disk"):
        assert "File too large" in child.stderr, child.stderr[-2000:]  # the write failed, as a full disk's would
    else:
        assert child.returncode == -9, child.stderr[-2000:]
    died_after_switch = step == "switched"
    assert deploy.serving_version(server.grpc_url) == (serving + 1 if died_after_switch else serving)
    deploy._wait_ready(server.grpc_url, 30)  # died right after a switch: the old version may still be unloading
    if not died_after_switch:
        assert _restart_would_load(repo) in (serving, serving + 1)  # consistent either way: never half a version
    # The next deploy settles the interrupted one first, then succeeds.
    version = deploy.deploy_index(repo, indexes[target], server.grpc_url)
    assert deploy.serving_version(server.grpc_url) == version and _restart_would_load(repo) == version
    assert server.is_ready()
    assert not (repo.parent / "repo.deploy" / "pending.json").exists()
    with RetrievalClient(server.grpc_url) as c:
        assert c.retrieve(["how do I copy a file"], k=3).index_version == deploy.index_of_version(repo, version)
    events = [json.loads(line)["event"] for line in (repo.parent / "repo.deploy" / "deployments.jsonl").read_text().splitlines()]
    assert events[-1] == "deploy" and events[-2] == ("deploy" if died_after_switch else "deploy-interrupted")


def load_index_version(folder) -> str:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["index_version"]


def _index_stubs(server) -> dict[int, int]:
    """Living mips_topk stubs: pid -> the version folder its model.py runs from (the stub's first argument)."""
    from pathlib import Path

    from model_repository.supervisor import living_stubs

    out = {}
    for stub in living_stubs(server.process.pid).values():
        if stub.model == "mips_topk":
            try:
                args = Path(f"/proc/{stub.pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:  # gone meanwhile
                continue
            out[stub.pid] = int(Path(args[1]).parent.name)
    return out


def test_a_stub_killed_during_a_deploys_own_load_ends_with_one_version_serving(repository, indexes, tmp_path):
    """The serving search stub is killed while a deploy's new version loads. The supervisor does not race
    the deploy with a reload of the old config; the old version, whose dead stub held requests, can never
    finish unloading (Triton 2.51 never completes those requests, and strict readiness stays false), so
    the supervisor stops the server within its stuck_s, and the deploy says so instead of hanging. Started
    again on the same repository, as an orchestrator would, the server is ready with one version of
    mips_topk, the new one, and every call answers from its index; no call failed before the kill."""
    import os
    import signal
    import threading

    import tritonclient.grpc as grpcclient

    repo = linked_copy(repository, tmp_path)
    server = start_server(repo, tmp_path / "work")
    texts = ["how do I copy a file", "what is a generator", "how do I read a file line by line", "what is a lambda"]

    def call(client, i):
        r = client.retrieve([texts[i % len(texts)]], k=K)
        return r.index_version, [h.key for h in r.hits[0]]

    outcome: dict = {}

    def deploy_b():
        try:
            outcome["version"] = deploy.deploy_index(repo, indexes["B"], server.grpc_url, timeout_s=90)
        except deploy.DeployError as e:
            outcome["error"] = str(e)

    try:
        with Traffic(server.grpc_url, call, clients=CLIENTS) as traffic:
            time.sleep(2.0)
            old = _index_stubs(server)
            assert sorted(old.values()) == [1], old
            deploying = threading.Thread(target=deploy_b)
            deploying.start()
            deadline = time.monotonic() + 60
            while 2 not in _index_stubs(server).values():  # the new version's instance is starting: the load is on
                assert time.monotonic() < deadline and deploying.is_alive(), "the new version never started loading"
                time.sleep(0.01)
            killed_at = time.monotonic()
            for pid in old:
                os.kill(pid, signal.SIGKILL)
            deploying.join(120)
            assert not deploying.is_alive(), "the deploy never returned"
            events = [(e.kind, e.model) for e in server.supervisor.events] if server.supervisor else []
            if server.process.poll() is not None or not server.is_ready():
                assert ("gave_up", "mips_topk") in events, (outcome, events, _lifecycle(server))
                assert "stopped answering while the deploy waited" in outcome.get("error", ""), outcome
                server.stop()
                server = start_server(repo, tmp_path / "work")  # what the orchestrator does
        assert not [c for c in traffic.failures if c.end < killed_at], "calls failed before the kill"
        with Traffic(server.grpc_url, call, clients=CLIENTS) as after:  # the server that serves now
            time.sleep(3.0)
        write_result("stub-killed-during-deploy", {"deploy": outcome, "supervisor": events, "during": traffic.summary(killed_at),
                                                   "after": after.summary()})
        assert not after.failures and len(after.calls) > 4 * CLIENTS, after.summary()
        control = grpcclient.InferenceServerClient(server.grpc_url)
        index = control.get_model_repository_index(as_json=True).get("models", [])
        control.close()
        ready = sorted(int(m["version"]) for m in index if m.get("name") == "mips_topk" and m.get("state") == "READY")
        assert ready == [2] and server.is_ready(), f"ready versions of mips_topk {ready}; the deploy said {outcome}"
        assert {c.value[0] for c in after.calls} == {load_index_version(indexes["B"])}
    finally:
        server.stop()
