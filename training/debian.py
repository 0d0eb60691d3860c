"""Training and held-out data from real Debian text, built by script with deterministic splits and checksums.

Debian package descriptions: the short description is the query, the long
description the document. Packages built from one source package share paragraphs
(``foo``, ``foo-dev``, ``foo-doc``), and some packages of different sources share a
description (``linux-image-*`` signed and unsigned), so:

- splits are drawn per cluster (by a hash of its key), never per package: a cluster
  joins the packages of one source and those with the same normalised short or long
  description (``clusters``);
- an evaluation query's own package is grade 2; packages of its source, or with the
  same document, grade 1; repeated queries within a split are merged;
- a training batch holds at most one package per cluster (``group``).

The descriptions come from apt's ``Translation-en`` index (``apt-get update -o
Acquire::Languages=en``) and the source names from the ``Packages`` index; both are
read through ``apt-helper cat-file`` and their sha256 recorded in the manifest,
since the text changes with Debian point releases.

Two more held-out sets, each split into dev and test: the Python FAQ
(``python3.11-doc``: questions against their answers **without** the question as
title, among other documentation sections) and WordNet (lemma -> glosses,
``lexicons``). ``build_all`` writes every held-out set first and then removes every
held-out query and relevant document, after normalisation, from the training pairs
and the distillation text (``distill_queries.jsonl``: Debian short descriptions and
the first sentence of the training split's long descriptions, Python doc section
titles, question sentences, first sentences (outside the FAQ set's corpus) and index terms, FOLDOC headwords, SCOWL English words,
the Debian FAQ's questions, and ``questions``' templated questions over the titles,
terms and short descriptions). Held-out WordNet lemmas also hold out their plurals
from the word list.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from . import lexicons, questions
from .corpus import SOURCES, build_python_docs, fetch_deb, is_built, read_corpus, write_jsonl
from .leaks import held_out_texts, normalise, read_rows
from model_repository.runtime.files import sha256_file

LISTS = Path("/var/lib/apt/lists")
MIN_LONG_WORDS = 12
SPLITS = (("test", 0.06), ("dev", 0.02))  # the rest is train
FAQ_DEV_SHARE = 0.4
_SKIP = re.compile(r"transitional|dummy package|debug symbols", re.I)


class DataBuildError(RuntimeError):
    pass


def _index_files(kind: str) -> list[Path]:
    """apt's list files for the main component of every suite (bookworm, -updates, -security)."""
    pattern = "*_main_i18n_Translation-en*" if kind == "translation" else "*_main_binary-amd64_Packages*"
    files = sorted(p for p in LISTS.glob(pattern) if not p.name.endswith(".diff_Index"))
    if not files and kind == "translation":
        print("[data] fetching apt's English Translation index (apt-get update -o Acquire::Languages=en)", file=sys.stderr)
        r = subprocess.run(["apt-get", "update", "-qq", "-o", "Acquire::Languages=en"], capture_output=True, text=True)
        files = sorted(LISTS.glob(pattern))
        if not files:
            raise DataBuildError(f"apt-get update did not fetch Translation-en: {r.stderr.strip()[-400:]}")
    if not files:
        raise DataBuildError(f"no apt {kind} index under {LISTS}; run apt-get update")
    return files


def _cat(path: Path) -> str:
    """Decompressed text of an apt list file (lz4, xz, gz or plain)."""
    r = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(path)], capture_output=True, check=True)
    return r.stdout.decode("utf-8", errors="replace")


def _stanzas(text: str):
    for block in text.split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def _long_text(raw: str) -> str:
    paragraphs, current = [], []
    for line in raw.splitlines():
        s = line.strip()
        if s == ".":
            paragraphs.append(" ".join(current))
            current = []
        elif s:
            current.append(s)
    paragraphs.append(" ".join(current))
    return "\n".join(p for p in paragraphs if p)


def parse_descriptions(translation: str, packages: str) -> list[dict]:
    source_of = {}
    for st in _stanzas(packages):
        if "Package" in st:
            source_of[st["Package"]] = st.get("Source", st["Package"]).split(" ")[0]
    rows, seen = [], set()
    for st in _stanzas(translation):
        name, desc = st.get("Package"), st.get("Description-en")
        if not name or not desc or name in seen:
            continue
        short, _, long = desc.partition("\n")
        long = _long_text(long)
        if _SKIP.search(short) or len(long.split()) < MIN_LONG_WORDS:
            continue
        seen.add(name)
        rows.append({"package": name, "source": source_of.get(name, name), "short": short.strip(), "long": long})
    return rows


def split_of(key: str) -> str:
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for name, share in SPLITS:
        edge += share
        if u < edge:
            return name
    return "train"


def clusters(rows: list[dict]) -> dict[str, str]:
    """package -> cluster key: packages joined by one source package, or by one short or long
    description after normalisation (``linux-image-*`` signed and unsigned), share a cluster.

    A cluster is split as a whole, so that no text crosses from training to evaluation.
    The key is the cluster's smallest source package name.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for r in rows:
        node = "src:" + r["source"]
        union(node, "short:" + normalise(r["short"]))
        union(node, "long:" + normalise(r["long"]))
    sources: dict[str, str] = {}
    for r in rows:
        root = find("src:" + r["source"])
        sources[root] = min(sources.get(root, r["source"]), r["source"])
    return {r["package"]: sources[find("src:" + r["source"])] for r in rows}


def _sample(rows: list, n: int, seed: str) -> list:
    rows = sorted(rows, key=lambda r: hashlib.sha256(f"{seed}:{r['package']}".encode()).hexdigest())
    return rows[:n]


def _unique_queries(queries: list[dict]) -> list[dict]:
    """One query per normalised text; repeats merge their relevance (the higher grade wins)."""
    kept: dict[str, dict] = {}
    for q in queries:
        key = normalise(q["query"])
        if key in kept:
            rel = kept[key]["relevance"]
            for doc, grade in q["relevance"].items():
                rel[doc] = max(grade, rel.get(doc, 0))
        else:
            kept[key] = q
    return list(kept.values())


def build_debian(out: Path, corpus_size: int, test_queries: int) -> tuple[dict, list[dict]]:
    """-> (manifest, the training rows, not yet filtered against the other held-out sets)."""
    translation = _index_files("translation")
    packages = _index_files("packages")
    t_text = "\n\n".join(_cat(p) for p in translation)
    p_text = "\n\n".join(_cat(p) for p in packages)
    rows = parse_descriptions(t_text, p_text)
    cluster = clusters(rows)
    by_split: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for r in rows:
        r["cluster"] = cluster[r["package"]]
        by_split[split_of(r["cluster"])].append(r)
    # Evaluation corpus: every dev and test document, then train documents as distractors.
    held = by_split["test"] + by_split["dev"]
    distractors = _sample(by_split["train"], max(0, corpus_size - len(held)), "distractor")
    corpus_rows = sorted(held + distractors, key=lambda r: r["package"])
    corpus = [{"id": r["package"], "title": r["package"], "text": r["long"]} for r in corpus_rows]
    write_jsonl(out / "corpus.jsonl", corpus)
    # Relevant: the query's own package (2); packages of its source, or with the same document (1).
    siblings: dict[str, list[str]] = {}
    for r in corpus_rows:
        siblings.setdefault("src:" + r["source"], []).append(r["package"])
        siblings.setdefault("long:" + normalise(r["long"]), []).append(r["package"])
    for split in ("dev", "test"):
        chosen = _sample(by_split[split], test_queries, f"queries-{split}")
        queries = []
        for r in chosen:
            related = siblings["src:" + r["source"]] + siblings["long:" + normalise(r["long"])]
            queries.append({"id": r["package"], "query": r["short"],
                            "relevance": {p: (2 if p == r["package"] else 1) for p in related}})
        write_jsonl(out / f"{split}_queries.jsonl", _unique_queries(queries))
    manifest = {
        "name": "debian-descriptions",
        "sources": {p.name: sha256_file(p) for p in translation + packages},
        "release": _release_dates(),
        "pairs": {k: len(v) for k, v in by_split.items()},
        "source_packages": {k: len({r["source"] for r in v}) for k, v in by_split.items()},
        "clusters": {k: len({r["cluster"] for r in v}) for k, v in by_split.items()},
        "corpus_documents": len(corpus),
        "split_rule": f"sha256(cluster: source packages joined by a shared normalised short or long description) -> "
                      f"{dict(SPLITS)}, rest train",
        "files": {},
    }
    return manifest, by_split["train"]


def _release_dates() -> dict:
    dates = {}
    for p in sorted(LISTS.glob("*_InRelease")):
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Date:"):
                dates[p.name] = line.partition(":")[2].strip()
                break
    return dates


def build_faq(out: Path, cache: Path, distractors: int, accept_unpinned: bool = False) -> tuple[dict, list[dict]]:
    """FAQ questions -> answers (no titles) among other documentation sections, split by a hash
    of the normalised question into dev (FAQ_DEV_SHARE) and test, so that "...in C?" and
    "...in C++?" land together. -> (manifest, every documentation section)."""
    docs_folder = cache.parent / "corpus" / "python-docs"
    if not is_built(docs_folder):
        build_python_docs(docs_folder, cache, accept_unpinned=accept_unpinned)
    docs = read_corpus(docs_folder / "corpus.jsonl")
    queries = [json.loads(line) for line in (docs_folder / "queries.jsonl").read_text(encoding="utf-8").splitlines() if line]
    answers = {q["positive"] for q in queries}
    others = [d for d in docs if d["id"] not in answers and not d["id"].startswith("faq/")]
    others = sorted(others, key=lambda d: hashlib.sha256(d["id"].encode()).hexdigest())[:distractors]
    corpus = [{"id": d["id"], "title": "" if d["id"] in answers else d["title"], "text": d["text"]}
              for d in docs if d["id"] in answers] + others
    write_jsonl(out / "faq_corpus.jsonl", corpus)
    split: dict[str, list[dict]] = {"dev": [], "test": []}
    for n, q in enumerate(queries):
        u = int(hashlib.sha256(f"faq-split:{normalise(q['query'])}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        split["dev" if u < FAQ_DEV_SHARE else "test"].append({"id": str(n), "query": q["query"], "positive": q["positive"]})
    for name, rows in split.items():
        write_jsonl(out / f"faq_{name}_queries.jsonl", rows)
    return ({"faq_queries": {k: len(v) for k, v in split.items()}, "faq_documents": len(corpus),
             "faq_source": json.loads((docs_folder / "manifest.json").read_text())["source"]}, docs)


def build_wordnet(out: Path, cache: Path, queries: int, corpus_size: int) -> dict:
    synsets, source = lexicons.read_wordnet(cache)
    corpus, split = lexicons.wordnet_set(synsets, queries, corpus_size)
    write_jsonl(out / "wordnet_corpus.jsonl", corpus)
    for name, rows in split.items():
        write_jsonl(out / f"wordnet_{name}_queries.jsonl", rows)
    return {"wordnet_queries": {k: len(v) for k, v in split.items()}, "wordnet_documents": len(corpus), "wordnet_source": source}


_QUESTION = re.compile(r"(?:^|(?<=[.!?]) )((?:What|How|Why|When|Where|Which|Who|Is|Are|Can|Does|Do|Should|Will|Would|Could)"
                       r" [^.!?<>(){}]{8,200}\w\?)")


_INDEX_ENTRY = re.compile(r"^(?:single|pair|triple|module|keyword|operator|object|exception|statement|builtin|see|seealso):\s*(.+)$")


def python_index_terms(deb: Path) -> list[str]:
    """The ``.. index::`` entries of the documentation sources (``pair: file; reading`` -> "file reading"),
    FAQ pages left out."""
    terms: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        for path in sorted((Path(tmp) / SOURCES).rglob("*.rst.txt")):
            if path.relative_to(Path(tmp) / SOURCES).as_posix().startswith("faq/"):
                continue
            block = False
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                s = line.strip()
                if s.startswith(".. index::"):
                    entry, block = s.removeprefix(".. index::").strip(), True
                elif block and line[:1].isspace() and s:
                    entry = s
                else:
                    block = False
                    continue
                m = _INDEX_ENTRY.match(entry)
                pieces = [m.group(1)] if m else entry.split(",")
                for piece in pieces:
                    term = " ".join(piece.replace(";", " ").lstrip("!").split())
                    if sum(c.isalpha() for c in term) >= 3:
                        terms.append(term)
    return sorted(set(terms))


_SENTENCE_END = re.compile(r"(?<=[a-z0-9)][.!?]) (?=[A-Z])")


def first_sentence(text: str) -> str | None:
    """The first sentence of a long description, if it has 4 to 40 words."""
    sentence = _SENTENCE_END.split(" ".join(text.split()), maxsplit=1)[0]
    return sentence if 4 <= len(sentence.split()) <= 40 else None


def distillation_texts(debian_train: list[dict], docs: list[dict], foldoc: list[str], index_terms: list[str],
                       words: list[str] = (), faq_questions: list[str] = (), faq_corpus: list[dict] = ()) -> list[dict]:
    """Unlabelled query-like text for stage 2, by source (Python FAQ pages are never read).

    First sentences are taken only from documentation sections outside the FAQ set's
    corpus (its distractors included), and none that occurs in that corpus's text.
    """
    faq_ids, faq_text = {d["id"] for d in faq_corpus}, "\x00".join(d["text"] for d in faq_corpus)
    rows = [{"query": r["short"], "source": "debian-short"} for r in debian_train]
    rows += [{"query": s, "source": "debian-long-sentence"} for r in debian_train if (s := first_sentence(r["long"]))]
    pages = [d for d in docs if not d["id"].startswith("faq/")]
    rows += [{"query": d["title"], "source": "python-doc-title"} for d in pages]
    rows += [{"query": m, "source": "python-doc-question"} for d in pages for m in _QUESTION.findall(d["text"])
             if 4 <= len(m.split()) <= 30]
    rows += [{"query": s, "source": "python-doc-sentence"} for d in pages
             if d["id"] not in faq_ids and (s := first_sentence(d["text"])) and s not in faq_text]
    rows += [{"query": t, "source": "python-doc-index-term"} for t in index_terms]
    rows += [{"query": w, "source": "foldoc-headword"} for w in foldoc]
    rows += [{"query": w, "source": "english-word"} for w in words]
    rows += [{"query": q, "source": "debian-faq-question"} for q in faq_questions]
    return rows


def _drop_held_out(rows: list[dict], fields: tuple[str, ...], held: set[str]) -> tuple[list[dict], int]:
    """Rows none of whose ``fields`` is held out; an English word also goes when it may be a held-out lemma's plural."""
    def out(r: dict) -> bool:
        if r.get("source") == "english-word":
            return bool(lexicons.word_forms(normalise(r["query"])) & held)
        return any(normalise(r[f]) in held for f in fields)

    kept = [r for r in rows if not out(r)]
    return kept, len(rows) - len(kept)


def build_all(out: Path, cache: Path, corpus_size: int = 5000, test_queries: int = 1000, faq_distractors: int = 1500,
              wordnet_queries: int = 1000, accept_unpinned: bool = False) -> dict:
    """Every held-out set first, then training and distillation text with every held-out text removed.
    ``accept_unpinned``: build from another python3.11-doc than the pinned one (training.corpus.fetch_deb)."""
    out.mkdir(parents=True, exist_ok=True)
    manifest, train = build_debian(out, corpus_size, test_queries)
    faq, docs = build_faq(out, cache, faq_distractors, accept_unpinned)
    manifest.update(faq)
    manifest.update(build_wordnet(out, cache, wordnet_queries, corpus_size))
    held: set[str] = set()
    for prefix, corpus in (("", "corpus"), ("faq_", "faq_corpus"), ("wordnet_", "wordnet_corpus")):
        held |= held_out_texts(out / f"{corpus}.jsonl", [out / f"{prefix}{s}_queries.jsonl" for s in ("dev", "test")])
    train, dropped = _drop_held_out(train, ("short", "long"), held)
    write_jsonl(out / "train.jsonl", [{"query": r["short"], "positive": r["long"], "group": r["cluster"]} for r in train])
    foldoc, foldoc_source = lexicons.read_foldoc_headwords(cache)
    words, words_source = lexicons.read_words(cache)
    faq_questions, faq_source = lexicons.read_debian_faq_questions(cache)
    index_terms = python_index_terms(fetch_deb(cache, accept_unpinned=accept_unpinned))
    distill = distillation_texts(train, docs, foldoc, index_terms, words, faq_questions, read_rows(out / "faq_corpus.jsonl"))
    distill, distill_dropped = _drop_held_out(distill + questions.templated_questions(distill, words), ("query",), held)
    seen: set[str] = set()
    distill = [r for r in distill if not (normalise(r["query"]) in seen or seen.add(normalise(r["query"])))]
    write_jsonl(out / "distill_queries.jsonl", distill)
    manifest["held_out_removed"] = {"train_pairs": dropped, "distillation_texts": distill_dropped}
    manifest["distillation_sources"] = {
        "counts": {s: sum(r["source"] == s for r in distill) for s in dict.fromkeys(r["source"] for r in distill)},
        "licences": {"debian-short": "Debian package descriptions (each package's own DFSG-free licence)",
                     "debian-long-sentence": "Debian package descriptions (each package's own DFSG-free licence)",
                     "english-word": words_source["licence"],
                     "debian-faq-question": faq_source["licence"],
                     "python-doc-title": "Python Software Foundation License (python3.11-doc)",
                     "python-doc-question": "Python Software Foundation License (python3.11-doc)",
                     "python-doc-sentence": "Python Software Foundation License (python3.11-doc)",
                     "python-doc-index-term": "Python Software Foundation License (python3.11-doc)",
                     "foldoc-headword": foldoc_source["licence"],
                     "question-template-python": "templates over python-doc-title and python-doc-index-term (their licence)",
                     "question-template-debian": "templates over debian-short and foldoc-headword (their licences)"},
        "foldoc_source": foldoc_source,
        "english_word_source": words_source,
        "debian_faq_source": faq_source,
        "not_used": "WordNet glosses (the third held-out set) and any man-page text (reserved)",
    }
    manifest["parameters"] = {"corpus_size": corpus_size, "test_queries": test_queries, "faq_distractors": faq_distractors,
                              "wordnet_queries": wordnet_queries, "builder_sha256": _builder_sha256()}
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(out.glob("*.jsonl"))}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _builder_sha256() -> str:
    """Changes when this builder or its helpers change, so that stale data is rebuilt."""
    here = Path(__file__).parent
    return hashlib.sha256(b"".join(sha256_file(here / f).encode() for f in ("debian.py", "lexicons.py", "leaks.py", "questions.py"))).hexdigest()


def is_current(out: Path, corpus_size: int, test_queries: int, faq_distractors: int, wordnet_queries: int = 1000) -> bool:
    m = out / "manifest.json"
    if not m.exists():
        return False
    manifest = json.loads(m.read_text(encoding="utf-8"))
    want = {"corpus_size": corpus_size, "test_queries": test_queries, "faq_distractors": faq_distractors,
            "wordnet_queries": wordnet_queries, "builder_sha256": _builder_sha256()}
    return manifest.get("parameters") == want and all(
        (out / name).exists() and sha256_file(out / name) == sha for name, sha in manifest["files"].items())
