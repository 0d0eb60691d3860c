"""Every file the server loads is checked against the sha256 recorded when the repository was rendered:
by the launcher before tritonserver starts, and by each python model whenever it loads (a reload, a deploy).
"""
from __future__ import annotations

import json
import urllib.error

import pytest

from clients.retrieval import RetrievalClient
from model_repository.launcher import ServerConfig, ServerStartError, TritonServer, free_port
from model_repository.runtime.files import ARTIFACTS_MANIFEST, ArtifactMismatch, verify_artifacts
from model_repository.supervisor import Repository
from tests.conftest import linked_copy, start_server
from tests.test_implementations import _repository

# One file of each kind a model loads: the tokenizer, the ONNX graph, the index's vectors and its documents.
TAMPERED = ("tokenizer/1/tokenizer.json", "query_encoder/1/model.onnx", "mips_topk/1/index/shard-00000.npy",
            "mips_topk/1/index/docs.jsonl")


def _tamper(path) -> None:
    """Flip the last byte; the file is a hard link into the shared repository, so replace it, never write through it."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.unlink()
    path.write_bytes(bytes(data))


def _config(repo, folder) -> ServerConfig:
    return ServerConfig(model_repository=repo, workdir=folder / "work", grpc_port=free_port(), http_port=free_port(),
                        metrics_port=free_port())


@pytest.mark.parametrize("relative", TAMPERED)
def test_the_launcher_refuses_a_changed_file_before_the_server_starts(repository, tmp_path, relative):
    repo = linked_copy(repository, tmp_path)
    _tamper(repo / relative)
    server = TritonServer(_config(repo, tmp_path))
    with pytest.raises(ServerStartError, match=rf"{relative.split('/')[-1]}: sha256 must be [0-9a-f]{{64}}; got [0-9a-f]{{64}}"):
        server.start()
    assert server.process is None  # refused before tritonserver ran


def test_a_missing_file_or_manifest_is_refused(repository, tmp_path):
    repo = linked_copy(repository, tmp_path)
    (repo / "tokenizer" / "1" / "tokenizer.json").unlink()
    with pytest.raises(ServerStartError, match=r"tokenizer.json: sha256 must be [0-9a-f]{64}; got missing"):
        TritonServer(_config(repo, tmp_path)).start()
    (repo / "tokenizer" / "1" / ARTIFACTS_MANIFEST).unlink()
    with pytest.raises(ArtifactMismatch, match=rf"no {ARTIFACTS_MANIFEST}; render the repository again"):
        verify_artifacts(repo / "tokenizer" / "1")


def test_the_torch_encoders_tower_files_are_covered(tmp_path_factory):
    repo = _repository(tmp_path_factory, "torch-artifacts", "--encoder-implementation", "torch")
    folder = repo / "query_encoder" / "1"
    listed = set(json.loads((folder / ARTIFACTS_MANIFEST).read_text(encoding="utf-8"))["sha256"])
    assert {"model.onnx", "torch/config.json"} <= listed and any(name.endswith(".safetensors") for name in listed), listed
    weights = next(folder / name for name in sorted(listed) if name.endswith(".safetensors"))
    _tamper(weights)
    with pytest.raises(ArtifactMismatch, match=r"\.safetensors: sha256 must be"):
        verify_artifacts(folder)


def test_a_model_reloaded_on_a_changed_file_is_refused_and_the_old_instance_serves(repository, tmp_path):
    repo = linked_copy(repository, tmp_path)
    server = start_server(repo, tmp_path / "work")
    try:
        _tamper(repo / "query_encoder" / "1" / "model.onnx")
        with pytest.raises(urllib.error.HTTPError) as refused:
            Repository(server.http_url).reload("query_encoder", 1)
        assert "model.onnx: sha256 must be" in refused.value.read().decode()
        with RetrievalClient(server.grpc_url) as c:
            assert len(c.retrieve(["how do I copy a file"], k=3).hits[0]) == 3
    finally:
        server.stop()
