"""Shared fixtures: the built artifacts, a real tritonserver on free loopback ports, clients."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

# OpenAI-Triton kernels run interpreted where torch sees no CUDA device (set before triton
# is imported), and compiled on the GPU where it does: then the kernel tests put their
# tensors on DEVICE, since compiled kernels cannot read host memory.
HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from model_repository.launcher import ServerConfig, TritonServer, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"


def pytest_collection_modifyitems(config, items):
    if not HAS_CUDA:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def repository() -> Path:
    """The rendered repository; `make test` builds it before pytest (cached after the first time)."""
    from build.__main__ import main as build_main

    assert build_main(["all", "--artifacts", str(ARTIFACTS)]) == 0
    return ARTIFACTS / "model_repository"


@pytest.fixture(scope="session")
def render_info(repository):
    from model_repository.runtime.rendered import Rendered

    return Rendered.read(repository)


@pytest.fixture(scope="session")
def queries() -> list[str]:
    """Real queries: the Python FAQ questions of the default corpus."""
    path = ARTIFACTS / "corpus" / "python-docs" / "queries.jsonl"
    return [json.loads(line)["query"] for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def pipeline(repository, render_info):
    """The in-process query path built from the very files the server loads."""
    from kernels.pooling import Pooling
    from model_repository.runtime.encoder import OnnxEncoder
    from model_repository.runtime.pipeline import EmbeddingPipeline
    from model_repository.runtime.text import TextTokenizer

    ctx = render_info.context
    return EmbeddingPipeline(
        TextTokenizer(repository / "tokenizer" / "1" / ctx.tokenizer_file, ctx.max_tokens, prefix=ctx.prefix,
                      eos_id=int(ctx.eos_id) if ctx.eos_id else None),
        OnnxEncoder(repository / "query_encoder" / "1" / ctx.onnx_file),
        Pooling.parse(ctx.pooling),
    )


def linked_copy(repository: Path, folder: Path) -> Path:
    """``folder/repo``: the repository with every file hard-linked, for tests that change it. Replace a file
    (unlink, then write) rather than write through the link, which would change the shared repository."""
    repo = folder / "repo"
    shutil.copytree(repository, repo, copy_function=os.link)
    return repo


def render_variant(out: Path, repository: Path, **settings) -> dict:
    """``repository``'s tower and index rendered into ``out`` with ServingSettings overrides (`python -m build variant`)."""
    from build.render import ServingSettings
    from build.render import render_variant as render

    return render(repository, out, ServingSettings(**settings))


def start_server(repository: Path, workdir: Path, **overrides) -> TritonServer:
    config = ServerConfig(
        model_repository=repository, workdir=workdir,
        grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), **overrides,
    )
    return TritonServer(config).start()


@pytest.fixture(scope="session")
def server(repository, tmp_path_factory):
    srv = start_server(repository, tmp_path_factory.mktemp("server"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def grpc(server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture()
def retrieval(server):
    from clients.retrieval import RetrievalClient

    with RetrievalClient(server.grpc_url) as client:
        yield client


def rows_in_flight_settled(table, within_s: float = 1.0) -> int:
    """``table.in_flight()`` once it reads 0 or ``within_s`` has passed: a ticket comes back just after its
    answer went out. 1 s is well inside the tickets' 5 s ttl, so only a ticket given back reads 0."""
    import time

    deadline = time.monotonic() + within_s
    while table.in_flight() and time.monotonic() < deadline:
        time.sleep(0.05)
    return table.in_flight()


def assert_same_ranking(ids_a, scores_a, ids_b, scores_b, atol: float = 1e-6) -> None:
    """Equal top-k answers up to the order of near-ties: scores agree within ``atol``, and where the ids
    differ, the score at that rank is within ``atol`` of another rank's (two BLAS libraries round a
    dot product differently, so documents tied to ~1e-7 may swap)."""
    scores_a, scores_b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    np.testing.assert_allclose(scores_a, scores_b, rtol=0, atol=atol)
    for row, (ra, sa, rb) in enumerate(zip(np.asarray(ids_a), scores_a, np.asarray(ids_b))):
        for j in np.flatnonzero(ra != rb):
            assert (np.abs(sa - sa[j]) <= atol).sum() > 1, (
                f"row {row}, rank {j}: id {ra[j]} against {rb[j]} (score {sa[j]:.7f}), and no near-tie explains it")
