"""Question-shaped distillation text made from the mix's own titles, terms and descriptions.

The student learns the teacher's query embeddings only on the text it is shown, and
the mix holds ~150 real questions (the Python docs' and the Debian FAQ's) among
45,000 texts; on question-shaped queries it agrees with the teacher least. These
templates turn titles and terms that are already in the mix into user-style
questions ("How do I read and write CSV files?", "What is a path hook?"), so that
the question framing is seen on thousands of topics. No new source text is read:
every question rewrites one text of an existing training source, and the held-out
filter runs on the result like on every other row.

A verb phrase comes from "How to X", a gerund ("Reading and writing files" ->
"read and write files", checked against the word list) or a leading imperative
("Generate secure random numbers"); anything else is a noun phrase. The template is
picked by a hash of the text, so the output is the same on every build.
"""
from __future__ import annotations

import hashlib
import re

VERB_TEMPLATES = ("How do I {x}?", "How can I {x}?", "What is the best way to {x}?", "Is there a way to {x}?",
                  "How do you {x}?", "Why can't I {x}?")
NOUN_TEMPLATES = ("What is {x}?", "How do I use {x}?", "How does {x} work?", "Where can I find {x}?",
                  "Is there a way to use {x}?", "Why would I use {x}?", "What is {x} used for?")
# The leading verbs of the Python docs' module descriptions ("Generate ...", "Read ..."), written out:
# a part-of-speech tagger or WordNet (a held-out set) is not used.
IMPERATIVES = frozenset(
    "access add build call check compile compress convert create decode determine display dump encode execute extract "
    "find format generate handle implement import interpret list load make manage manipulate map parse print provide "
    "read remove replace run search send set show sort support test trace translate use write".split())
KEEP_CASE = frozenset({"Python", "Debian", "Linux", "Unix", "Windows", "GNU", "Tk", "Tkinter", "Emacs", "Perl", "Java", "X"})
_HOW_TO = re.compile(r"^how to ", re.IGNORECASE)


def _pick(text: str, templates: tuple):
    return templates[int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % len(templates)]


def _lower_first(phrase: str) -> str:
    first, _, rest = phrase.partition(" ")
    if first in KEEP_CASE or any(c.isupper() for c in first[1:]):
        return phrase
    return f"{first[:1].lower()}{first[1:]} {rest}".strip()


def _stem(gerund: str, words: frozenset[str]) -> str | None:
    """"reading" -> "read", "using" -> "use", "writing" -> "write", "running" -> "run"; None when no form is a word."""
    stem = gerund.lower()[:-3]
    vowels = "aeiou"
    short_vowel = len(stem) >= 2 and stem[-1] not in vowels and stem[-2] in vowels and (len(stem) < 3 or stem[-3] not in vowels)
    if short_vowel and stem + "e" in words:  # us-ing, writ-ing, mak-ing
        return stem + "e"
    if stem in words:
        return stem
    if len(stem) > 2 and stem[-1] == stem[-2] and stem[:-1] in words:  # runn-ing
        return stem[:-1]
    return stem + "e" if stem + "e" in words else None  # pars-ing, handl-ing


def verb_phrase(phrase: str, words: frozenset[str]) -> str | None:
    """The phrase as something a user asks how to do, or None when it is not one."""
    if _HOW_TO.match(phrase):
        return _HOW_TO.sub("", phrase)
    first, _, rest = phrase.partition(" ")
    if not rest:
        return None
    if first.lower() in IMPERATIVES:
        return f"{first.lower()} {rest}"
    if first.lower().endswith("ing") and (base := _stem(first, words)):
        # "Reading and writing files": every gerund joined by "and"/"or" to it is turned too.
        tail = re.sub(r"\b(and|or) (\w+ing)\b", lambda m: f"{m.group(1)} {_stem(m.group(2), words) or m.group(2)}", rest)
        return f"{base} {tail}"
    return None


def question(phrase: str, words: frozenset[str], where: str = "", title: bool = False) -> str | None:
    """One question about ``phrase`` (a title, term or short description), or None when it is too short or long.
    A title's capital is dropped ("Memory management" -> "What is memory management?"); a term's is its own ("Lisp")."""
    phrase = " ".join(phrase.split()).rstrip(".:;,")
    if not 1 <= len(phrase.split()) <= 14 or sum(c.isalpha() for c in phrase) < 3:
        return None
    if verb := verb_phrase(phrase, words):
        return _pick(phrase, VERB_TEMPLATES).format(x=verb + where)
    return _pick(phrase, NOUN_TEMPLATES).format(x=_lower_first(phrase) if title else phrase)


def python_phrases(title: str) -> list[str]:
    """"csv --- CSV File Reading and Writing: Module Contents" -> the description and the heading."""
    parts = [p.strip() for p in re.split(r" --- |: ", title)]
    return [p for p in (parts[1:] if " --- " in title else parts) if p]


def templated_questions(rows: list[dict], words: list[str] | frozenset[str]) -> list[dict]:
    """Questions from the Python docs' titles and index terms, Debian's short descriptions and
    FOLDOC's headwords: sources ``question-template-python`` and ``question-template-debian``."""
    known = frozenset(words)
    out: list[dict] = []
    for r in rows:
        source, text = r["source"], r["query"]
        if source == "python-doc-title":
            phrases, target, where = python_phrases(text), "question-template-python", " in Python"
        elif source == "python-doc-index-term":
            phrases, target, where = [text], "question-template-python", " in Python"
        elif source in ("debian-short", "foldoc-headword"):
            phrases, target, where = [text], "question-template-debian", ""
        else:
            continue
        for p in phrases:
            # Half of the Python questions say "in Python", as users often do.
            if q := question(p, known, where if _pick(p, (False, True)) else "", source == "python-doc-title"):
                out.append({"query": q, "source": target})
    return out
