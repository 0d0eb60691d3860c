"""Demo data from real Debian text, built by script with deterministic splits and checksums.

Debian package descriptions: the short description is the query, the long
description the document. Packages built from one source package share paragraphs
(``foo``, ``foo-dev``, ``foo-doc``), so:

- splits are drawn per source package (by a hash of its name), never per package;
- an evaluation query's own package is grade 2, its siblings grade 1;
- a training batch holds at most one package per source (``group``).

The descriptions come from apt's ``Translation-en`` index (``apt-get update -o
Acquire::Languages=en``) and the source names from the ``Packages`` index; both are
read through ``apt-helper cat-file`` and their sha256 recorded in the manifest,
since the text changes with Debian point releases.

The Python FAQ (``python3.11-doc``) is an extra held-out set: 167 questions against
their answers **without** the question as title, among other documentation sections.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

from .corpus import build_python_docs, is_built, read_corpus, write_jsonl
from model_repository.runtime.files import sha256_file

LISTS = Path("/var/lib/apt/lists")
MIN_LONG_WORDS = 12
SPLITS = (("test", 0.06), ("dev", 0.02))  # the rest is train
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


def split_of(source: str) -> str:
    u = int(hashlib.sha256(source.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for name, share in SPLITS:
        edge += share
        if u < edge:
            return name
    return "train"


def _sample(rows: list, n: int, seed: str) -> list:
    rows = sorted(rows, key=lambda r: hashlib.sha256(f"{seed}:{r['package']}".encode()).hexdigest())
    return rows[:n]


def build_debian(out: Path, corpus_size: int, test_queries: int) -> dict:
    translation = _index_files("translation")
    packages = _index_files("packages")
    t_text = "\n\n".join(_cat(p) for p in translation)
    p_text = "\n\n".join(_cat(p) for p in packages)
    rows = parse_descriptions(t_text, p_text)
    by_split: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for r in rows:
        by_split[split_of(r["source"])].append(r)
    train = [{"query": r["short"], "positive": r["long"], "group": r["source"]} for r in by_split["train"]]
    write_jsonl(out / "train.jsonl", train)
    # Evaluation corpus: every dev and test document, then train documents as distractors.
    held = by_split["test"] + by_split["dev"]
    distractors = _sample(by_split["train"], max(0, corpus_size - len(held)), "distractor")
    corpus_rows = sorted(held + distractors, key=lambda r: r["package"])
    corpus = [{"id": r["package"], "title": r["package"], "text": r["long"]} for r in corpus_rows]
    write_jsonl(out / "corpus.jsonl", corpus)
    siblings: dict[str, list[str]] = {}
    for r in corpus_rows:
        siblings.setdefault(r["source"], []).append(r["package"])
    for split in ("dev", "test"):
        chosen = _sample(by_split[split], test_queries, f"queries-{split}")
        queries = [{"id": r["package"], "query": r["short"],
                    "relevance": {p: (2 if p == r["package"] else 1) for p in siblings[r["source"]]}} for r in chosen]
        write_jsonl(out / f"{split}_queries.jsonl", queries)
    manifest = {
        "name": "debian-descriptions",
        "sources": {p.name: sha256_file(p) for p in translation + packages},
        "release": _release_dates(),
        "pairs": {k: len(v) for k, v in by_split.items()},
        "source_packages": {k: len({r["source"] for r in v}) for k, v in by_split.items()},
        "corpus_documents": len(corpus),
        "split_rule": f"sha256(source package) -> {dict(SPLITS)}, rest train",
        "files": {},
    }
    return manifest


def _release_dates() -> dict:
    dates = {}
    for p in sorted(LISTS.glob("*_InRelease")):
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Date:"):
                dates[p.name] = line.partition(":")[2].strip()
                break
    return dates


def build_faq(out: Path, cache: Path, distractors: int) -> dict:
    """FAQ questions -> answers (no titles) among other documentation sections."""
    docs_folder = cache.parent / "corpus" / "python-docs"
    if not is_built(docs_folder):
        build_python_docs(docs_folder, cache)
    docs = read_corpus(docs_folder / "corpus.jsonl")
    queries = [json.loads(line) for line in (docs_folder / "queries.jsonl").read_text(encoding="utf-8").splitlines() if line]
    answers = {q["positive"] for q in queries}
    others = [d for d in docs if d["id"] not in answers and not d["id"].startswith("faq/")]
    others = sorted(others, key=lambda d: hashlib.sha256(d["id"].encode()).hexdigest())[:distractors]
    corpus = [{"id": d["id"], "title": "" if d["id"] in answers else d["title"], "text": d["text"]}
              for d in docs if d["id"] in answers] + others
    write_jsonl(out / "faq_corpus.jsonl", corpus)
    write_jsonl(out / "faq_queries.jsonl", [{"id": str(n), "query": q["query"], "positive": q["positive"]} for n, q in enumerate(queries)])
    return {"faq_queries": len(queries), "faq_documents": len(corpus), "faq_source": json.loads((docs_folder / "manifest.json").read_text())["source"]}


def build_all(out: Path, cache: Path, corpus_size: int = 5000, test_queries: int = 1000, faq_distractors: int = 1500) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    manifest = build_debian(out, corpus_size, test_queries)
    manifest.update(build_faq(out, cache, faq_distractors))
    manifest["parameters"] = {"corpus_size": corpus_size, "test_queries": test_queries, "faq_distractors": faq_distractors}
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(out.glob("*.jsonl"))}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def is_current(out: Path, corpus_size: int, test_queries: int, faq_distractors: int) -> bool:
    m = out / "manifest.json"
    if not m.exists():
        return False
    manifest = json.loads(m.read_text(encoding="utf-8"))
    want = {"corpus_size": corpus_size, "test_queries": test_queries, "faq_distractors": faq_distractors}
    return manifest.get("parameters") == want and all(
        (out / name).exists() and sha256_file(out / name) == sha for name, sha in manifest["files"].items())
