"""Corpora: the default one built from Debian's python3.11-doc, or a user's JSONL.

Corpus JSONL, one document a line: ``{"id": str, "title": str, "text": str}``.
Queries JSONL (evaluation and tests): ``{"query": str, "positive": id}``.

The default corpus is real text nobody here wrote: the reStructuredText sources of
the Python 3.11 documentation, split into sections, plus the Python FAQ, whose
questions become queries with their answer as the relevant document. The .deb comes
from apt and is cached; the version ``sources.lock.json`` pins is the one used, and its
sha256 is checked. Another version (apt no longer offers the pinned one) fails the build,
unless the caller accepts it explicitly (``--accept-unpinned``); then it is reported and
recorded in the corpus manifest.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from model_repository.runtime.files import atomic_write_text, sha256_file

LOCK_FILE = Path(__file__).with_name("sources.lock.json")
DOC_PACKAGE = "python3.11-doc"
SOURCES = "usr/share/doc/python3.11/html/_sources"
MIN_SECTION_WORDS = 30
MIN_FAQ_ANSWER_WORDS = 15
# Release notes and licence text are not documentation a user searches.
SKIP_PREFIXES = ("whatsnew/", "license", "copyright", "about", "bugs", "contents", "glossary")

_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+:._])\1{2,}\s*$")
_ROLE = re.compile(r":[\w:+-]+:`(?:([^`<]*?)\s*<[^`>]*>|~?([^`]*))`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]+>`_+")
_LITERAL = re.compile(r"``([^`]+)``")


class CorpusError(ValueError):
    """A corpus or query file is malformed; the message names the line and the field."""


def _clean(lines: list[str]) -> str:
    kept, in_toctree = [], False
    for line in lines:
        s = line.strip()
        in_toctree = s.startswith(".. toctree::") or (in_toctree and (not s or line[:1].isspace()))
        if in_toctree or s.startswith(".. ") or s.startswith(":") and s.endswith(":") or _UNDERLINE.match(s):
            continue
        kept.append(line)
    text = "\n".join(kept)
    text = _ROLE.sub(lambda m: (m.group(1) or m.group(2) or "").strip(), text)
    text = _LINK.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    return " ".join(text.replace("::", ":").split())


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:80] or "section"


def split_sections(rst: str) -> Iterator[tuple[str, str]]:
    """Yield (heading, cleaned body) for every titled section of a .rst source."""
    lines = rst.splitlines()
    heads = []
    for i in range(len(lines) - 1):
        title, under = lines[i].strip(), lines[i + 1].strip()
        if title and not _UNDERLINE.match(title) and _UNDERLINE.match(under) and len(under) >= len(title):
            heads.append(i)
    for n, i in enumerate(heads):
        end = heads[n + 1] if n + 1 < len(heads) else len(lines)  # an overline left behind is dropped by _clean
        yield lines[i].strip(), _clean(lines[i + 2 : end])


def docs_from_sources(root: Path) -> tuple[list[dict], list[dict]]:
    """Walk an extracted _sources tree -> (documents, FAQ queries)."""
    docs, queries, seen = [], [], set()
    for path in sorted(root.rglob("*.rst.txt")):
        rel = path.relative_to(root).as_posix().removesuffix(".rst.txt")
        if rel.startswith(SKIP_PREFIXES):
            continue
        is_faq = rel.startswith("faq/")
        page_title = None
        for heading, body in split_sections(path.read_text(encoding="utf-8", errors="replace")):
            heading = _clean([heading])
            page_title = page_title or heading
            words = len(body.split())
            question = is_faq and heading.endswith("?")
            if words < (MIN_FAQ_ANSWER_WORDS if question else MIN_SECTION_WORDS):
                continue
            key = f"{rel}#{_slug(heading)}"
            n = 2
            while key in seen:
                key, n = f"{rel}#{_slug(heading)}-{n}", n + 1
            seen.add(key)
            title = heading if question or heading == page_title else f"{page_title}: {heading}"
            docs.append({"id": key, "title": title, "text": body})
            if question:
                queries.append({"query": heading, "positive": key})
    return docs, queries


def read_jsonl(path: Path, required: dict[str, type]) -> list[dict]:
    """Read JSONL whose rows must have the ``required`` fields with the given types."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            for field, kind in required.items():
                if not isinstance(row.get(field), kind) or (kind is str and not row[field].strip()):
                    raise CorpusError(f"{path}:{number}: field '{field}' must be a non-empty {kind.__name__}; got {row.get(field)!r}")
            rows.append(row)
    if not rows:
        raise CorpusError(f"{path}: no documents; a corpus needs at least one line")
    return rows


def read_corpus(path: Path) -> list[dict]:
    docs = read_jsonl(path, {"id": str, "title": str, "text": str})
    ids = [d["id"] for d in docs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise CorpusError(f"{path}: field 'id' must be unique; got {dup!r} more than once")
    return docs


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def locked(package: str) -> dict | None:
    """What ``sources.lock.json`` pins for ``package`` ({"version", "sha256"}), if it pins it."""
    return json.loads(LOCK_FILE.read_text(encoding="utf-8")).get(package)


def cached_deb(cache: Path, package: str, version: str = "*") -> Path | None:
    """The newest ``package`` .deb in ``cache`` of ``version`` (apt writes an epoch's ':' as %3a)."""
    found = sorted(cache.glob(f"{package}_{version.replace(':', '%3a')}_*.deb"))
    return found[-1] if found else None


def fetch_deb(cache: Path, package: str = DOC_PACKAGE, accept_unpinned: bool = False) -> Path:
    """apt-get download into ``cache`` (once), refreshing apt's lists once if apt does not offer it.

    A package the lock pins is fetched at the pinned version (``apt-get download pkg=version``), and a
    cached copy of another version does not stand in for it: a cache left by an older point release
    would silently change the corpus. If apt cannot give the pinned version even after ``apt-get
    update``, that is an error, unless ``accept_unpinned``: then the newest cached or downloadable one
    is used (``check_lock`` reports and records it)."""
    cache.mkdir(parents=True, exist_ok=True)
    pin = locked(package)
    if pin:
        if deb := cached_deb(cache, package, pin["version"]):
            return deb
        for attempt in range(2):
            r = subprocess.run(["apt-get", "download", f"{package}={pin['version']}"], cwd=cache, capture_output=True, text=True)
            if r.returncode == 0 and (deb := cached_deb(cache, package, pin["version"])):
                return deb
            if attempt == 0:  # lists older than the pin offer only older versions
                print(f"apt-get download {package}={pin['version']} failed; running apt-get update once", file=sys.stderr)
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        if not accept_unpinned:
            raise CorpusError(
                f"{package}: sources.lock.json pins version {pin['version']}, and apt-get cannot download it even after "
                f"apt-get update ({r.stderr.strip()[-300:]}). Another version changes the corpus, so the build stops: "
                f"pass --accept-unpinned to use the newest version apt offers (recorded as pinned: false), or a local "
                f"copy of the pinned .deb with --deb PATH")
        print(f"{package}: the pinned {pin['version']} cannot be had; --accept-unpinned: trying the newest version", file=sys.stderr)
    if deb := cached_deb(cache, package):
        return deb
    for attempt in range(2):
        r = subprocess.run(["apt-get", "download", package], cwd=cache, capture_output=True, text=True)
        if r.returncode == 0 and (deb := cached_deb(cache, package)):
            return deb
        if attempt == 0:
            print(f"apt-get download {package} failed; running apt-get update once", file=sys.stderr)
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    raise CorpusError(
        f"could not download Debian package {package} with apt-get:\n{r.stderr.strip()}\n"
        f"Pass a local copy with --deb PATH, or your own corpus with --corpus PATH.jsonl"
    )


def check_lock(deb: Path, accept_unpinned: bool = False) -> dict:
    """The .deb's source record; its version must be the pinned one (with the pinned sha256), unless
    ``accept_unpinned``, which reports another version and records it as not pinned."""
    lock = locked(DOC_PACKAGE)
    version = deb.name.split("_")[1]
    actual = sha256_file(deb)
    if version == lock["version"] and actual != lock["sha256"]:
        raise CorpusError(f"{deb}: sha256 must be {lock['sha256']} for version {version}; got {actual}")
    if version != lock["version"]:
        if not accept_unpinned:
            raise CorpusError(f"{deb}: {DOC_PACKAGE} {version} is not the pinned {lock['version']} (sources.lock.json); "
                              f"another version changes the corpus. Pass --accept-unpinned to build from it anyway")
        print(
            f"warning: {DOC_PACKAGE} {version} is not the pinned {lock['version']} (a Debian point release); "
            f"--accept-unpinned: using it and recording sha256 {actual} in the corpus manifest",
            file=sys.stderr,
        )
    return {"package": DOC_PACKAGE, "version": version, "sha256": actual, "pinned": version == lock["version"]}


def builder_sha256() -> str:
    """Changes whenever this parser changes, so that a cached corpus is rebuilt."""
    return sha256_file(Path(__file__))


def is_built(folder: Path) -> bool:
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return False
    m = json.loads(manifest.read_text(encoding="utf-8"))
    return (
        m.get("builder_sha256") == builder_sha256()
        and (folder / "corpus.jsonl").exists()
        and sha256_file(folder / "corpus.jsonl") == m["corpus_sha256"]
    )


def build_python_docs(out: Path, cache: Path, deb: Path | None = None, accept_unpinned: bool = False) -> dict:
    """Build corpus.jsonl + queries.jsonl + manifest.json in ``out`` from python3.11-doc."""
    deb = deb or fetch_deb(cache, accept_unpinned=accept_unpinned)
    source = check_lock(deb, accept_unpinned)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        docs, queries = docs_from_sources(Path(tmp) / SOURCES)
    write_jsonl(out / "corpus.jsonl", docs)
    write_jsonl(out / "queries.jsonl", queries)
    manifest = {
        "name": "python-docs",
        "builder_sha256": builder_sha256(),
        "source": source,
        "documents": len(docs),
        "queries": len(queries),
        "corpus_sha256": sha256_file(out / "corpus.jsonl"),
        "queries_sha256": sha256_file(out / "queries.jsonl"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
