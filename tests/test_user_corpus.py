"""A user's own JSONL corpus goes through the same build and serves the same way."""
from __future__ import annotations

import json

import pytest
from tritonclient.utils import InferenceServerException

from build.__main__ import main as build_main
from training.corpus import CorpusError, read_corpus
from clients.retrieval import RetrievalClient
from tests.conftest import ARTIFACTS, start_server

DOCS = [
    {"id": "tea", "title": "Brewing green tea", "text": "Use water at about 80 degrees Celsius and steep the leaves for two minutes."},
    {"id": "bike", "title": "Fixing a flat tyre", "text": "Remove the wheel, lever the tyre off the rim, patch the inner tube and pump it up."},
    {"id": "bread", "title": "Sourdough starter", "text": "Mix equal weights of flour and water, then feed the starter every day for a week."},
    {"id": "knot", "title": "Tying a bowline", "text": "Make a small loop, pass the end up through it, around the standing line and back down."},
    {"id": "plant", "title": "Repotting a cactus", "text": "Wear thick gloves, loosen the root ball and move it to a pot one size larger with gritty soil."},
]


@pytest.fixture(scope="module")
def user_repository(tmp_path_factory, repository):
    root = tmp_path_factory.mktemp("user")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    artifacts = root / "artifacts"
    artifacts.mkdir()
    (artifacts / "towers").symlink_to(ARTIFACTS / "towers")  # reuse the exported encoder
    assert build_main(["all", "--artifacts", str(artifacts), "--corpus", str(corpus), "--max-k", "100"]) == 0
    return artifacts / "model_repository"


@pytest.fixture(scope="module")
def user_server(user_repository, tmp_path_factory):
    server = start_server(user_repository, tmp_path_factory.mktemp("user-server"))
    yield server
    server.stop()


def test_user_corpus_is_served(user_server):
    with RetrievalClient(user_server.grpc_url) as client:
        result = client.retrieve(["how hot should the water be for tea", "my bicycle has a puncture"], k=2)
    assert [hits[0].key for hits in result.hits] == ["tea", "bike"]
    assert result.hits[0][0].title == "Brewing green tea"
    assert result.hits[0][0].snippet == DOCS[0]["text"]


def test_k_is_capped_by_the_index_size(user_server):
    with RetrievalClient(user_server.grpc_url) as client:
        assert len(client.retrieve(["tea"], k=5).hits[0]) == 5
        with pytest.raises(InferenceServerException, match=r"k must be in \[1, 5\]; got 6"):
            client.retrieve(["tea"], k=6)


@pytest.mark.parametrize(
    "content,message",
    [
        ("", r"no documents; a corpus needs at least one line"),
        ('{"id": "a", "title": "t"}\n', r":1: field 'text' must be a non-empty str; got None"),
        ('{"id": "a", "title": "t", "text": "x"}\n{"id": 7, "title": "t", "text": "y"}\n', r":2: field 'id' must be a non-empty str; got 7"),
        ('{"id": "a", "title": "t", "text": "x"}\nnot json\n', r":2: not valid JSON"),
        ('{"id": "a", "title": "t", "text": "x"}\n{"id": "a", "title": "u", "text": "y"}\n', r"field 'id' must be unique; got 'a' more than once"),
    ],
)
def test_bad_corpus_files_name_the_line_and_field(tmp_path, content, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match=message):
        read_corpus(path)
