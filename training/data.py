"""Training and evaluation data: JSONL files users can bring, read with clear errors.

Pairs (training), one a line::

    {"query": str, "positive": str, "negatives": [str, ...]?, "group": str?}

``positive`` and ``negatives`` are document texts. ``group`` (optional) marks pairs
whose documents are relevant to each other's queries (Debian: the source package);
a batch never holds two pairs of one group, so that no in-batch negative is a
positive in disguise.

Evaluation corpus: ``{"id": str, "text": str, "title": str?}``. Evaluation queries:
``{"id": str?, "query": str, "positive": id | [id, ...], "relevance": {id: grade}?}``.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Iterator, Sequence

from .corpus import CorpusError, read_jsonl
from model_repository.runtime.text import document_text  # noqa: F401  (the evaluation encodes documents as the index does)


class DataError(CorpusError):
    """A training or evaluation file is malformed; the message names the file, line and field."""


def _optional_str_list(path: Path, number: int, row: dict, field: str) -> list[str]:
    value = row.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(f"{path}:{number}: field '{field}' must be a list of non-empty strings; got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Pair:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    group: str = ""


def read_pairs(path: Path | str) -> list[Pair]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"training pairs file {path} does not exist")
    try:
        rows = read_jsonl(path, {"query": str, "positive": str})
    except CorpusError as e:
        raise DataError(str(e).replace("no documents; a corpus", "no pairs; a training file")) from None
    pairs = []
    for number, row in enumerate(rows, 1):
        negatives = _optional_str_list(path, number, row, "negatives")
        group = row.get("group", "")
        if not isinstance(group, str):
            raise DataError(f"{path}:{number}: field 'group' must be a string; got {group!r}")
        pairs.append(Pair(row["query"], row["positive"], tuple(negatives), group or f"#{number}"))
    return pairs


def read_eval_corpus(path: Path | str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"evaluation corpus {path} does not exist")
    docs = read_jsonl(path, {"id": str, "text": str})
    seen: set[str] = set()
    for number, d in enumerate(docs, 1):
        if d["id"] in seen:
            raise DataError(f"{path}:{number}: field 'id' must be unique; got {d['id']!r} more than once")
        seen.add(d["id"])
    return docs


def read_eval_queries(path: Path | str, corpus_ids: set[str]) -> list[dict]:
    """-> [{"id", "query", "relevance": {doc id: grade >= 1}}]; every id must be in the corpus."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"evaluation queries {path} does not exist")
    out = []
    for number, row in enumerate(read_jsonl(path, {"query": str}), 1):
        relevance = row.get("relevance")
        if relevance is None:
            positive = row.get("positive")
            ids = [positive] if isinstance(positive, str) else positive
            if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
                raise DataError(f"{path}:{number}: field 'positive' must be a doc id or a non-empty list of ids; got {positive!r}")
            relevance = {i: 1 for i in ids}
        if not isinstance(relevance, dict) or not relevance or not all(isinstance(g, int) and g >= 1 for g in relevance.values()):
            raise DataError(f"{path}:{number}: field 'relevance' must map doc ids to grades >= 1; got {relevance!r}")
        missing = sorted(set(relevance) - corpus_ids)
        if missing:
            raise DataError(f"{path}:{number}: field 'relevance' names doc ids not in the corpus: {missing[:5]}")
        out.append({"id": str(row.get("id", number)), "query": row["query"], "relevance": relevance})
    return out


def group_batches(pairs: Sequence[Pair], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless global batches of pair indices, shuffled each epoch, one pair per group.

    The same seed gives the same sequence on every rank, so each rank can take its
    own slice of the same global batch (what makes 1 process and N processes
    comparable).
    """
    groups = len({p.group for p in pairs})
    if batch_size > groups:
        raise DataError(f"batch_size must be <= the number of distinct groups ({groups}); got {batch_size}")
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        while True:
            batch, used, rest = [], set(), []
            for i in order:
                if len(batch) < batch_size and pairs[i].group not in used:
                    batch.append(i)
                    used.add(pairs[i].group)
                else:
                    rest.append(i)
            if len(batch) == batch_size:
                break
            epoch = list(range(len(pairs)))  # the tail of an epoch: top up with the next one
            rng.shuffle(epoch)
            order.extend(epoch)
        order = rest
        yield batch


def length_windows(batches: Iterator[list[int]], lengths: Sequence[int], groups: Sequence[str], window: int,
                   seed: int) -> Iterator[list[int]]:
    """Re-cut ``batches`` (e.g. :func:`group_batches`) so that each batch holds rows of similar length.

    ``window`` batches are taken at once, their rows sorted by length and cut into batches of the same
    size, which are yielded in random order. A batch still holds at most one row of a group: a row whose
    group its batch already has waits for the next window, as does a window's last, unfilled batch, so
    every row drawn is trained on once, as without the window. ``window`` 1 passes ``batches`` through.
    The same seed gives the same batches on every rank."""
    if window == 1:
        yield from batches
        return
    rng = random.Random(seed)
    waiting: list[int] = []
    while True:
        drawn = [next(batches) for _ in range(window)]
        size = len(drawn[0])
        rows = waiting + [i for b in drawn for i in b]
        cut: list[list[int]] = []
        batch, used, waiting = [], set(), []
        for i in sorted(rows, key=lambda i: lengths[i]):
            if groups[i] in used:
                waiting.append(i)
                continue
            batch.append(i)
            used.add(groups[i])
            if len(batch) == size:
                cut.append(batch)
                batch, used = [], set()
        waiting.extend(batch)
        rng.shuffle(cut)
        yield from cut
