"""WordNet, FOLDOC, a word list and the Debian FAQ from Debian: a third held-out set, and query-like text for distillation.

- **WordNet** (``wordnet-base``, WordNet 3.0 licence): the lemma is the query, the
  glosses of its synsets (definition only, the quoted examples dropped, since they
  repeat the lemma) are the relevant documents. General English, unlike both the
  Debian and the Python sets. Only ``data.{noun,verb,adj,adv}`` are read; the
  package's man pages are reserved and never opened.
- **FOLDOC** (``dict-foldoc``, GNU FDL 1.1+): its headwords, computing terms, are
  unlabelled query-like text for stage 2.
- **SCOWL** (``wamerican``, permissive): general English words, unlabelled query-like
  text for stage 2 (one-word queries are what the WordNet set sends). Possessives are
  dropped; the caller removes held-out lemmas and their plural forms (``word_forms``).
- **The Debian FAQ** (``debian-faq``, SPI's verbatim-copying licence): its questions,
  question-shaped text for stage 2.

Every .deb comes through ``apt-get download`` into the cache, like ``python3.11-doc``;
only the named files are unpacked (a package's man page is never even written out,
since man pages are reserved), and the .deb's sha256 goes into the data manifest.
"""
from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
import tempfile
from pathlib import Path

from .corpus import fetch_deb
from .leaks import normalise
from model_repository.runtime.files import sha256_file

WORDNET = "wordnet-base"
FOLDOC = "dict-foldoc"
WORDS = "wamerican"
DEBIAN_FAQ = "debian-faq"
LICENCES = {WORDNET: "WordNet 3.0 licence (Princeton University; permissive)",
            FOLDOC: "GNU Free Documentation License 1.1 or later",
            WORDS: "SCOWL copyright notice (Kevin Atkinson et al.; use for any purpose)",
            DEBIAN_FAQ: "Debian FAQ licence (Software in the Public Interest; verbatim and modified copies permitted)"}
POS = ("noun", "verb", "adj", "adv")
MAX_SENSES = 3  # a lemma with more senses is too ambiguous to be a fair query


def _extract(deb: Path, members: list[str], into: Path) -> None:
    """Unpack only ``members`` of ``deb`` into ``into``."""
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into), "--wildcards", *[f"*{m}" for m in members]], stdin=tar.stdout, check=True)
    tar.stdout.close()
    if tar.wait() != 0:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb.name} exited {tar.returncode}")
    missing = [m for m in members if not (into / m).exists()]
    if missing:
        raise FileNotFoundError(f"{deb.name} lacks {missing}")


def parse_wordnet_data(text: str, pos: str) -> list[dict]:
    """Lines of a WordNet ``data.<pos>`` file -> [{"id", "lemmas", "gloss"}]; the licence header is skipped."""
    synsets = []
    for line in text.splitlines():
        if not line or line.startswith(" "):
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        count = int(fields[3], 16)
        lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
        lemmas = [lemma.split("(")[0] for lemma in lemmas]  # adjective markers: "big(a)"
        definition = gloss.split('; "')[0].strip().rstrip(";").strip()
        if definition:
            synsets.append({"id": f"{pos}/{fields[0]}", "lemmas": lemmas, "gloss": definition})
    return synsets


def read_wordnet(cache: Path) -> tuple[list[dict], dict]:
    deb = fetch_deb(cache, WORDNET)
    files = [f"usr/share/wordnet/data.{p}" for p in POS]
    with tempfile.TemporaryDirectory() as tmp:
        _extract(deb, files, Path(tmp))
        synsets = [s for p, f in zip(POS, files) for s in parse_wordnet_data((Path(tmp) / f).read_text(encoding="utf-8", errors="replace"), p)]
    return synsets, _source(WORDNET, deb)


def read_foldoc_headwords(cache: Path) -> tuple[list[str], dict]:
    deb = fetch_deb(cache, FOLDOC)
    index = "usr/share/dictd/foldoc.index"
    with tempfile.TemporaryDirectory() as tmp:
        _extract(deb, [index], Path(tmp))
        lines = (Path(tmp) / index).read_text(encoding="utf-8", errors="replace").splitlines()
    words = sorted({line.split("\t")[0].strip() for line in lines if "\t" in line})
    words = [w for w in words if sum(c.isalpha() for c in w) >= 3 and not w.startswith("00-database")]
    return words, _source(FOLDOC, deb)


def _source(package: str, deb: Path) -> dict:
    return {"package": package, "deb": deb.name, "sha256": sha256_file(deb), "licence": LICENCES[package]}


def read_words(cache: Path) -> tuple[list[str], dict]:
    """SCOWL's American English word list, without possessives ("cat's")."""
    deb = fetch_deb(cache, WORDS)
    member = "usr/share/dict/american-english"
    with tempfile.TemporaryDirectory() as tmp:
        _extract(deb, [member], Path(tmp))
        lines = (Path(tmp) / member).read_text(encoding="utf-8", errors="replace").splitlines()
    words = sorted({w.strip() for w in lines if w.strip() and "'" not in w and sum(c.isalpha() for c in w) >= 3})
    return words, _source(WORDS, deb)


def word_forms(word: str) -> set[str]:
    """The word and the stems it may be a plural of: a held-out lemma also holds out its plural."""
    forms = {word}
    if word.endswith("s"):
        forms.add(word[:-1])
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")
    return forms


_TOC_ENTRY = re.compile(r"^ {4}\d+(?:\.\d+)+\. (.*)$")
_CONTINUED = re.compile(r"^ {4}(?! *\d+(?:\.\d+)+\. )(\S.*)$")


def parse_faq_questions(text: str) -> list[str]:
    """The questions in the table of contents of the Debian FAQ's text edition.

    An entry may wrap onto indented lines and hold two questions ("...? Why ...?").
    """
    toc = re.split(r"\nChapter\s1\.", text.split("Table of Contents", 1)[-1], maxsplit=1)[0]
    entries: list[str] = []
    for line in toc.splitlines():
        if m := _TOC_ENTRY.match(line):
            entries.append(m.group(1).strip())
        elif entries and (m := _CONTINUED.match(line)):
            entries[-1] += " " + m.group(1).strip()
        elif line.strip():
            entries.append("")  # a chapter title closes the entry before it
    questions = [q.strip() for e in entries for q in re.findall(r"[^?]*\?", e)]
    return [q for q in questions if len(q.split()) >= 3]


def read_debian_faq_questions(cache: Path) -> tuple[list[str], dict]:
    deb = fetch_deb(cache, DEBIAN_FAQ)
    member = "usr/share/doc/debian/FAQ/debian-faq.en.txt.gz"
    with tempfile.TemporaryDirectory() as tmp:
        _extract(deb, [member], Path(tmp))
        text = gzip.decompress((Path(tmp) / member).read_bytes()).decode("utf-8", errors="replace")
    return sorted(set(parse_faq_questions(text))), _source(DEBIAN_FAQ, deb)


def _rank(key: str, seed: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def wordnet_set(synsets: list[dict], queries: int, corpus_size: int, dev_share: float = 0.3) -> tuple[list[dict], dict[str, list[dict]]]:
    """-> (corpus, {"dev": queries, "test": queries}): lemma -> every synset that holds it.

    Lemmas are keyed by their normalised form ("hip-hop" and "hip hop" are one query).

    Lemmas are drawn by hash among those with 1..MAX_SENSES senses; the corpus holds
    every relevant synset plus hash-drawn distractors up to ``corpus_size``.
    """
    senses: dict[str, list[str]] = {}
    for s in synsets:
        for lemma in dict.fromkeys(normalise(lemma) for lemma in s["lemmas"]):
            senses.setdefault(lemma, []).append(s["id"])
    candidates = sorted((lemma for lemma, ids in senses.items() if len(ids) <= MAX_SENSES and sum(c.isalpha() for c in lemma) >= 3),
                        key=lambda lemma: _rank(lemma, "wordnet-query"))
    chosen = candidates[:queries]
    relevant = {i for lemma in chosen for i in senses[lemma]}
    by_id = {s["id"]: s for s in synsets}
    rest = sorted((i for i in by_id if i not in relevant), key=lambda i: _rank(i, "wordnet-distractor"))
    ids = sorted(relevant) + rest[: max(0, corpus_size - len(relevant))]
    corpus = [{"id": i, "title": "", "text": by_id[i]["gloss"]} for i in sorted(ids)]
    split: dict[str, list[dict]] = {"dev": [], "test": []}
    for lemma in chosen:
        u = int(_rank(lemma, "wordnet-split")[:8], 16) / 0xFFFFFFFF
        split["dev" if u < dev_share else "test"].append({"id": lemma, "query": lemma, "relevance": {i: 1 for i in senses[lemma]}})
    return corpus, split
