"""A corpus of ~117k real documents for serving at scale: every WordNet 3.0 synset's gloss.

``python -m build wordnet-corpus`` writes ``corpus.jsonl`` (id, title: the synset's lemmas,
text: its definition) and ``manifest.json`` (the .deb's sha256 and licence). It is a speed
corpus: `retrieve` on an index of this size is dominated by the search, as users' indexes
are. It is never a quality set here (the WordNet held-out set of training/ draws its queries
from the same synsets). Only ``data.{noun,verb,adj,adv}`` are read; WordNet's man pages are
reserved and never opened.
"""
from __future__ import annotations

import json
from pathlib import Path

from model_repository.runtime.files import sha256_file
from training.corpus import write_jsonl
from training.lexicons import read_wordnet


def wordnet_documents(synsets: list[dict]) -> list[dict]:
    """Synsets -> corpus rows: the lemmas (each once, in order) are the title, the definition the text."""
    return [{"id": f"wordnet/{s['id']}", "title": ", ".join(dict.fromkeys(s["lemmas"])), "text": s["gloss"]} for s in synsets]


def build_wordnet_corpus(out: Path, cache: Path) -> dict:
    synsets, source = read_wordnet(cache)
    docs = wordnet_documents(synsets)
    write_jsonl(out / "corpus.jsonl", docs)
    manifest = {"name": "wordnet-glosses", "documents": len(docs), "source": source,
                "corpus_sha256": sha256_file(out / "corpus.jsonl")}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
