"""build/: corpus parsing, the source lock, ONNX export checks, and deterministic, valid rendering."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from training.corpus import CorpusError, check_lock, split_sections
from build.export import ExportedTower, ExportMismatch, check_against_torch
from build.render import ENSEMBLE_TOKENIZER, PYTHON_MODELS, ServingSettings, parse_model_config, render_repository
from kernels.pooling import Pooling
from tests.conftest import ARTIFACTS, ROOT

RST = """\
=================
Library FAQ
=================

.. contents::

How do I copy a file?
---------------------

The :mod:`shutil` module contains a :func:`~shutil.copyfile` function; see
`the docs <https://example.org>`_ and ``shutil.copy2``.

.. toctree::
   :maxdepth: 1

   other.rst

**************
Another part
**************

Text of the second part.
"""


def test_split_sections_cleans_roles_links_and_directives():
    sections = dict(split_sections(RST))
    assert list(sections) == ["Library FAQ", "How do I copy a file?", "Another part"]
    assert sections["How do I copy a file?"] == (
        "The shutil module contains a shutil.copyfile function; see the docs and shutil.copy2."
    )
    assert sections["Another part"] == "Text of the second part."


def test_lock_refuses_a_pinned_version_with_another_checksum(tmp_path):
    lock = json.loads((ROOT / "training" / "sources.lock.json").read_text(encoding="utf-8"))["python3.11-doc"]
    fake = tmp_path / f"python3.11-doc_{lock['version']}_all.deb"
    fake.write_bytes(b"not the real package")
    with pytest.raises(CorpusError, match=rf"sha256 must be {lock['sha256']} for version .*; got [0-9a-f]{{64}}"):
        check_lock(fake)


def test_lock_refuses_another_point_release_unless_it_is_accepted_and_then_records_it(tmp_path, capsys):
    newer = tmp_path / "python3.11-doc_3.11.2-6+deb12u99_all.deb"
    newer.write_bytes(b"a later upload")
    with pytest.raises(CorpusError, match=r"3.11.2-6\+deb12u99 is not the pinned .*Pass --accept-unpinned"):
        check_lock(newer)
    source = check_lock(newer, accept_unpinned=True)
    assert source["version"] == "3.11.2-6+deb12u99" and source["pinned"] is False and len(source["sha256"]) == 64
    assert "is not the pinned" in capsys.readouterr().err


def test_a_pin_apt_cannot_supply_refreshes_the_lists_once_then_fails_the_build(tmp_path, monkeypatch):
    """Lists older than the pin offer only older versions: apt-get update once, then the pinned version
    again; still missing, the build stops (a warning let a fresh machine build another corpus). With
    --accept-unpinned the newest version is used instead. apt-get here is a stand-in that always fails
    and writes down how it was called."""
    from training.corpus import fetch_deb

    lock = json.loads((ROOT / "training" / "sources.lock.json").read_text(encoding="utf-8"))["python3.11-doc"]
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "E: Version not found" >&2\nexit 100\n')
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cache = tmp_path / "cache"
    cache.mkdir()
    older = cache / "python3.11-doc_3.11.2-6+deb12u1_all.deb"
    older.write_bytes(b"an older point release")
    with pytest.raises(CorpusError, match=rf"pins version {re.escape(lock['version'])}, and apt-get cannot download it even after "
                                          r"apt-get update .*Version not found.*pass --accept-unpinned"):
        fetch_deb(cache)
    pinned = f"download python3.11-doc={lock['version']}"
    assert calls.read_text().splitlines() == [pinned, "update -qq", pinned]
    calls.unlink()
    assert fetch_deb(cache, accept_unpinned=True) == older
    assert calls.read_text().splitlines() == [pinned, "update -qq", pinned]


def test_export_recorded_its_check_against_pytorch(render_info):
    check = render_info.query_tower["check"]
    assert check["min_cosine"] >= 0.9999 and check["texts"] >= 16
    assert check["max_abs_diff_embedding"] < 1e-4


def test_export_check_refuses_a_model_that_differs(repository, render_info, pipeline):
    import torch

    from build.export import _torch_module

    module = _torch_module(Path(render_info.query_tower["source"]))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    with pytest.raises(ExportMismatch, match=r"ONNX vs PyTorch: min cosine must be >= 0.9999; got"):
        check_against_torch(module, pipeline.encoder, pipeline.tokenizer, Pooling.MEAN, ["copy a file", "what is a lambda"])


def test_every_rendered_config_is_a_valid_model_config(repository):
    names = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
    served = [*(m for m in PYTHON_MODELS if m != "pool_normalize"), ENSEMBLE_TOKENIZER]  # on the CPU the encoder pools
    assert names == sorted([*served, "embed", "retrieve"])
    for name in served:
        config = parse_model_config((repository / name / "config.pbtxt").read_text(encoding="utf-8"))
        assert config.backend == "python" and config.max_batch_size > 0
        # the CPU encoder runs one request per execution (a batch of n costs ~n queries on a core)
        assert config.HasField("dynamic_batching") == (name != "query_encoder"), f"{name}: dynamic batching"
        version = repository / name / "1"
        assert (version / "model.py").exists() and (version / "runtime" / "adapter.py").exists() and (version / "kernels" / "topk.py").exists()
    retrieve = parse_model_config((repository / "retrieve" / "config.pbtxt").read_text(encoding="utf-8"))
    assert [s.model_name for s in retrieve.ensemble_scheduling.step] == [ENSEMBLE_TOKENIZER, "query_encoder", "mips_topk"]


def test_rendering_is_deterministic(repository, render_info, tmp_path):
    tower = ExportedTower(ARTIFACTS / "towers" / render_info.query_tower["fingerprint"])
    index_dir = ARTIFACTS / "index" / render_info.index["index_version"]
    settings = ServingSettings()
    render_repository(tmp_path / "a", tower, index_dir, settings)
    render_repository(tmp_path / "b", tower, index_dir, settings)
    configs = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").glob("*/config.pbtxt"))
    assert len(configs) == 6  # tokenizer, ensemble_tokenizer, query_encoder (it pools on the CPU), mips_topk, embed, retrieve
    for rel in configs:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes() == (repository / rel).read_bytes()


def test_rendering_refuses_an_index_of_another_query_tower(render_info, tmp_path):
    tower = ExportedTower(ARTIFACTS / "towers" / render_info.query_tower["fingerprint"])
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    (index_dir / "manifest.json").write_text(json.dumps({"query_tower_fingerprint": "someoneelse"}), encoding="utf-8")
    with pytest.raises(ValueError, match="pairs with query tower someoneelse"):
        render_repository(tmp_path / "out", tower, index_dir, ServingSettings())


@pytest.mark.parametrize(
    "args,message",
    [
        (["--pooling", "max"], "error: pooling must be one of [mean, last_token, cls]; got 'max'"),
        (["--query-tower", "/nonexistent-tower"], "error: tower checkpoint /nonexistent-tower has no config.json"),
    ],
)
def test_build_cli_names_the_bad_setting(repository, args, message, capsys):
    from build.__main__ import main

    assert main(["all", "--artifacts", str(ARTIFACTS), *args]) == 2
    assert message in capsys.readouterr().err


def test_a_cached_export_is_found_without_torch(render_info, monkeypatch):
    """The engine is built in NVIDIA's TensorRT container, which has no torch: only a new export may need it."""
    import sys

    from build.export import default_tower, export_tower

    q = render_info.query_tower
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    tower = export_tower(default_tower(), ROOT / "artifacts" / "towers", Pooling.parse(q["pooling"]), q["max_tokens"], ["x"])
    assert tower.info["fingerprint"] == q["fingerprint"]


def test_wordnet_glosses_make_a_corpus_that_the_index_build_reads(tmp_path):
    """python -m build wordnet-corpus: one document per synset, ids unique across parts of speech, lemmas as the title."""
    from build.wordnet_corpus import wordnet_documents
    from training.corpus import read_corpus, write_jsonl
    from training.lexicons import parse_wordnet_data

    noun = parse_wordnet_data("00001740 03 n 02 entity 0 Entity 0 000 | that which is perceived to exist  \n"
                              "00002137 03 n 02 abstraction 0 abstract_entity 0 000 | a general concept; \"an example\"  \n", "noun")
    verb = parse_wordnet_data("00001740 29 v 01 breathe 0 000 | draw air into, and expel out of, the lungs  \n", "verb")
    docs = wordnet_documents(noun + verb)
    write_jsonl(tmp_path / "corpus.jsonl", docs)
    assert read_corpus(tmp_path / "corpus.jsonl") == docs  # ids unique: the same offset in two files stays two documents
    assert [d["id"] for d in docs] == ["wordnet/noun/00001740", "wordnet/noun/00002137", "wordnet/verb/00001740"]
    assert [d["title"] for d in docs] == ["entity, Entity", "abstraction, abstract entity", "breathe"]
    assert docs[1]["text"] == "a general concept"


def test_a_rebuild_without_corpus_refuses_a_folder_built_from_another_corpus(tmp_path, capsys):
    """``build render --artifacts X`` without ``--corpus``, where X was built from a corpus of its own, used to
    re-encode the default corpus into X; it now stops before touching X, and names the corpus to pass."""
    from build.__main__ import main

    (tmp_path / "model_repository").mkdir()
    (tmp_path / "model_repository" / "build.json").write_text(json.dumps({"corpus": "/data/wordnet/corpus.jsonl"}))
    assert main(["render", "--artifacts", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "was built from --corpus /data/wordnet/corpus.jsonl: pass --corpus /data/wordnet/corpus.jsonl" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".build.lock", "model_repository"]  # nothing built


def test_a_cached_other_point_release_does_not_stand_in_for_the_pinned_one(tmp_path):
    """A cache left by another point release once built the FAQ corpus from it (pinned: false) while
    the pinned .deb was one apt-get away; the pinned one wins when both are cached."""
    from training.corpus import fetch_deb

    lock = json.loads((ROOT / "training" / "sources.lock.json").read_text(encoding="utf-8"))["python3.11-doc"]
    pinned = tmp_path / f"python3.11-doc_{lock['version']}_all.deb"
    for name in ("python3.11-doc_3.11.2-6+deb12u1_all.deb", "python3.11-doc_3.11.2-7_all.deb"):
        (tmp_path / name).write_bytes(b"another point release")
    pinned.write_bytes(b"the pinned one")
    assert fetch_deb(tmp_path) == pinned
