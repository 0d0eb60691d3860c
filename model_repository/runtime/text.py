"""Validation and tokenization of raw request text.

Policy: a text is rejected (INVALID_ARGUMENT) when it is not UTF-8, is empty or only
white space, or has more than ``max_chars`` characters. A valid text longer than
``max_tokens`` tokens is truncated to ``max_tokens`` (special tokens included), the
way sentence-transformers truncates at ``max_seq_length``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from . import InvalidInput


def decode_texts(raw: Sequence[bytes | str], max_chars: int, field: str = "TEXT") -> list[str]:
    """Decode and validate every element of a BYTES tensor; the first bad one raises."""
    texts = []
    for row, value in enumerate(raw):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidInput(
                    f"{field}[{row}] must be UTF-8; byte 0x{value[e.start]:02x} at offset {e.start} is not valid"
                ) from None
        if not value.strip():
            raise InvalidInput(f"{field}[{row}] must be non-empty text; got {value!r}")
        if len(value) > max_chars:
            raise InvalidInput(f"{field}[{row}] exceeds {max_chars} characters; got {len(value)}")
        texts.append(value)
    return texts


def document_text(doc: dict) -> str:
    """The text a doc tower encodes, at index build and in evaluation: the title (when it is not blank) above the body."""
    title = doc.get("title") or ""
    return f"{title}\n{doc['text']}" if title.strip() else doc["text"]


class TextTokenizer:
    """Hugging Face fast tokenizer (``tokenizer.json``) padding to the longest row."""

    def __init__(self, tokenizer_file: Path | str, max_tokens: int, pad_to_multiple: int = 0, prefix: str = "",
                 eos_id: int | None = None):
        """``prefix``: an instruction put before every text; ``eos_id``: a token appended after the
        (truncated) text, as decoder-LLM towers are trained (training/towers.py does the same)."""
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2; got {max_tokens}")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.enable_truncation(max_length=max_tokens - (eos_id is not None))
        pad = self.tokenizer.padding or {}
        self.pad_id = pad.get("pad_id", 0)
        pad_token = pad.get("pad_token", self.tokenizer.id_to_token(self.pad_id) or "[PAD]")
        if eos_id is None:
            # To the longest row; on the GPU target to a multiple of pad_to_multiple tokens, so that
            # the TensorRT encoder's batcher finds requests of equal shape to batch.
            self.tokenizer.enable_padding(pad_id=self.pad_id, pad_token=pad_token, pad_to_multiple_of=pad_to_multiple or None)
        else:
            self.tokenizer.no_padding()  # EOS goes after each row's last token, then rows are padded here
        self.max_tokens, self.pad_to_multiple, self.prefix, self.eos_id = max_tokens, pad_to_multiple, prefix, eos_id

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts -> input_ids (B, S) int64, attention_mask (B, S) int64 (right padding)."""
        encodings = self.tokenizer.encode_batch([self.prefix + t for t in texts])
        if self.eos_id is None:
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            return ids, mask
        rows = [e.ids + [self.eos_id] for e in encodings]
        width = max(len(r) for r in rows)
        if self.pad_to_multiple:
            width = -(-width // self.pad_to_multiple) * self.pad_to_multiple
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for n, r in enumerate(rows):
            ids[n, : len(r)] = r
            mask[n, : len(r)] = 1
        return ids, mask
