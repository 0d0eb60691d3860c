"""Build configuration: a dataclass with help text, parsed from the command line."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .render import ServingSettings


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    artifacts: Path = dataclasses.field(default=Path("artifacts"), metadata={"help": "where every generated file goes (git-ignored)"})
    corpus: Path | None = dataclasses.field(default=None, metadata={"help": "corpus JSONL with id, title, text; default: the Python 3.11 docs from Debian"})
    deb: Path | None = dataclasses.field(default=None, metadata={"help": "a local python3.11-doc .deb to use instead of apt-get download"})
    accept_unpinned: bool = dataclasses.field(default=False, metadata={"help": "build the default corpus from another python3.11-doc than training/sources.lock.json pins, when the pinned one cannot be had (recorded as pinned: false); without it that is an error"})
    query_tower: Path | None = dataclasses.field(default=None, metadata={"help": "query tower checkpoint folder (Hugging Face); default: packaged all-MiniLM-L6-v2"})
    doc_tower: Path | None = dataclasses.field(default=None, metadata={"help": "doc tower checkpoint folder; default: the query tower"})
    pooling: str = dataclasses.field(default="mean", metadata={"help": "mean, last_token or cls"})
    max_tokens: int = dataclasses.field(default=256, metadata={"help": "tokens per text, special tokens included; longer text is truncated"})
    engine: Path | None = dataclasses.field(default=None, metadata={"help": "target gpu: the query encoder's TensorRT engine (default: artifacts/trt/<fingerprint>/model.plan)"})
    precision: str = dataclasses.field(default="fp16", metadata={"help": "engine step: fp16, int8, fp8 or fp32"})
    index_compression: str = dataclasses.field(default="none", metadata={"help": "none, int8 or matryoshka:<dim>: a compressed copy finds candidates, fp16 ranks them"})
    rescore: int = dataclasses.field(default=200, metadata={"help": "candidates re-ranked exactly when the index is compressed"})
    shards: int = dataclasses.field(default=1, metadata={"help": "split the index into N shards, one mips_topk_<i> each (GPU i), merged by topk_merge"})
    encode_batch_size: int = dataclasses.field(default=32, metadata={"help": "documents per batch when building the index"})

    @property
    def repository(self) -> Path:
        return self.artifacts / "model_repository"


def _add_fields(parser, cls) -> None:
    for f in dataclasses.fields(cls):
        if f.type == "bool":
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, action="store_true", help=f.metadata["help"].replace('%', '%%'))
            continue
        arg_type = {"int": int, "str": str, "float": float}.get(f.type, Path)  # annotations are strings here
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=arg_type, default=f.default,
                            help=f"{f.metadata['help']} (default: {f.default})".replace('%', '%%'))  # argparse formats help with %


def add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    _add_fields(parser.add_argument_group("serving settings"), ServingSettings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_fields(parser, BuildConfig)
    add_serving_arguments(parser)


def from_args(args: argparse.Namespace) -> tuple[BuildConfig, ServingSettings]:
    pick = lambda cls: cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})  # noqa: E731
    return pick(BuildConfig), pick(ServingSettings)
