"""``render.json``: how a rendered repository serves and what, as one typed value.

``python -m build`` writes it beside the repository's models (``Rendered.write``); the launcher, the
deploy tool, the benchmarks and the tests read it (``Rendered.read``). Nothing else reads the file.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

FILE = "render.json"


@dataclasses.dataclass(frozen=True)
class ServingContext:
    """The resolved serving settings (every ``auto`` made concrete for the target) and the facts of the
    tower and index they serve: what every config.pbtxt template is rendered from."""

    # the serving settings, resolved (build/render.py: ServingSettings.resolved)
    max_batch_size: int
    max_rows_per_request: int
    max_queue_delay_us: int
    max_queue_size: int
    queue_timeout_us: int
    instances: int
    max_chars: int
    intra_op_threads: int
    max_k: int
    snippet_chars: int
    target: str
    pool_implementation: str
    topk_implementation: str
    preferred_batch_sizes: list[int]
    pad_to_multiple: int
    encoder_implementation: str
    encoder_device: str
    encoder_dtype: str
    encoder_cuda_graphs: int
    encoder_batch_buckets: str
    encoder_batching: str
    encoder_quantization: str
    admission_budget_ms: float
    admission_ttl_s: float
    topk_gemm: str
    pooling_step: str
    search_step: str
    # the query tower
    dim: int
    max_tokens: int
    pooling: str
    prefix: str
    eos_id: str
    query_tower_fingerprint: str
    tokenizer_file: str
    onnx_file: str
    encoder_bytes: int
    # the index
    index_dir: str
    index_rows: int
    index_dtype: str
    index_resident_bytes: int
    shard_count: int = 0  # 0: one index; N > 1: mips_topk_0 .. N-1 and topk_merge
    shard_rows: list[int] = dataclasses.field(default_factory=list)
    index_version: str = ""  # sharded repositories: the index the shards were cut from


@dataclasses.dataclass(frozen=True)
class Rendered:
    context: ServingContext
    sources: str  # sha256 prefix over the templates and the shipped runtime (build/render.py: sources_fingerprint)
    query_tower: dict  # the exported tower's export.json
    index: dict  # the index's manifest, without its shard list

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def write(self, repository: Path) -> None:
        (Path(repository) / FILE).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_json(cls, text: str, where: str = FILE) -> Rendered:
        raw = json.loads(text)
        context = raw.get("context", {})
        fields = {f.name for f in dataclasses.fields(ServingContext)}
        required = {f.name for f in dataclasses.fields(ServingContext)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        unknown, missing = sorted(set(context) - fields), sorted(required - set(context))
        if unknown or missing or set(raw) != {f.name for f in dataclasses.fields(cls)}:
            raise ValueError(f"{where} was not written by this version of build (unknown settings {unknown}, missing {missing}, "
                             f"sections {sorted(raw)}): render the repository again with `python -m build`")
        return cls(ServingContext(**context), raw["sources"], raw["query_tower"], raw["index"])

    @classmethod
    def read(cls, repository: Path) -> Rendered:
        path = Path(repository) / FILE
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise FileNotFoundError(f"{path} is missing or unreadable (render the repository with `python -m build`): {e}") from e
        return cls.from_json(text, str(path))

    @classmethod
    def read_if_rendered(cls, repository: Path) -> Rendered | None:
        """None where the folder holds no render.json (a repository made by hand)."""
        return cls.read(repository) if (Path(repository) / FILE).exists() else None
