"""Held-out text stays held out: exact match after normalisation, across every split and source.

``normalise`` folds case, drops punctuation and collapses whitespace, so that
"Linux 6.1 for 64-bit PCs (signed)" and "linux 6.1 for 64 bit pcs signed" are one text.
``held_out_texts`` gathers every query and every relevant document of the dev and
test sets; ``overlap`` names the training or distillation rows that repeat one.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

_PUNCT = re.compile(r"[^\w\s]+")


def normalise(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.casefold()).split())


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def held_out_texts(corpus: Path, query_files: Iterable[Path]) -> set[str]:
    """Normalised queries and relevant documents of the given evaluation files.

    Distractor documents are left out: they are ordinary documents that evaluation
    adds to make the search harder, and Debian draws them from the training split.
    """
    relevant: set[str] = set()
    texts: set[str] = set()
    for path in query_files:
        for q in read_rows(path):
            texts.add(normalise(q["query"]))
            rel = q.get("relevance") or {p: 1 for p in ([q["positive"]] if isinstance(q["positive"], str) else q["positive"])}
            relevant.update(rel)
    texts.update(normalise(d["text"]) for d in read_rows(corpus) if d["id"] in relevant)
    texts.discard("")
    return texts


def overlap(texts: Iterable[str], held: set[str]) -> list[str]:
    """The given texts whose normalised form is held out (in input order, each once)."""
    return list(dict.fromkeys(t for t in texts if normalise(t) in held))
