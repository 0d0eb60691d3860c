"""Run configuration: TOML recipes (``training/recipes/*.toml``) into checked dataclasses.

Every error names the field: an unknown key, a wrong type, a value out of range, a
file that does not exist. ``--set stage1.lr=1e-4`` overrides one field from the
command line.
"""
from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path

RECIPES = Path(__file__).with_name("recipes")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


@dataclasses.dataclass
class Stage1Config:
    model: str = "minilm"  # 'minilm' (packaged all-MiniLM-L6-v2) or a Hugging Face checkpoint folder
    pooling: str = "auto"  # auto: last_token + EOS for decoder LLMs, mean for encoders
    query_prefix: str = ""
    doc_prefix: str = ""
    max_query_tokens: int = 32
    max_doc_tokens: int = 128
    batch_size: int = 32  # per process, per micro-step; in-batch negatives span all processes
    length_window: int = 1  # cut batches from this many at once, sorted by document length (1: as drawn)
    grad_accum: int = 1
    steps: int = 100
    lr: float = 2e-5
    warmup_steps: int = 10
    weight_decay: float = 0.01
    temperature: float = 0.05
    hard_negatives: int = 0  # per query, mined with the current towers every mine_every steps
    mine_every: int = 0  # 0: mine once, before the first step
    mine_pool: int = 4096  # pairs whose documents form the mining pool
    l2sp: float = 0.0  # L2-SP: weight of sum((w - w_start)^2), which keeps the towers near their start
    matryoshka: list[int] = dataclasses.field(default_factory=list)  # nested prefix widths trained too, e.g. [128, 256]
    lora_r: int = 0  # 0: full fine-tuning; > 0: LoRA adapters, merged on save
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    gradient_checkpointing: bool = False
    bf16: bool = False  # autocast to bf16 (CUDA only)
    pool_kernel: str = "torch"  # torch | triton (the autograd OpenAI-Triton kernel, GPU)
    seed: int = 0


@dataclasses.dataclass
class Stage2Config:
    teacher: str = ""  # the stage-1 query tower folder; default: <run>/stage1/query
    student: str = "minilm"  # 'minilm', a checkpoint folder, or 'teacher' (the stage-1 query tower itself)
    student_layers: int = 0  # keep the first N transformer layers (0: all)
    student_ffn: int = 0  # keep the N most important feed-forward neurons of each layer (0: all), ranked on the distillation text
    prune_texts: int = 2000  # how many distillation texts rank the neurons
    freeze_embeddings: bool = False  # keep the student's token embeddings as they start (words the mix lacks stay in step)
    projection: str = "auto"  # auto: add a linear map when dims differ; none: a mismatch is an error
    w_mse: float = 1.0
    w_cos: float = 1.0
    w_rank: float = 0.0  # weight of the score-distillation KL over a pool of the stage-1 doc tower's documents (0: off)
    rank_pool: str = "docs"  # docs: training positives by the stage-1 doc tower; queries: the teacher's own distillation-text embeddings
    rank_docs: int = 4096  # how many texts make that pool
    rank_temperature: float = 0.05  # the scores' softmax temperature (stage 1 trains at 0.05)
    matryoshka: list[int] = dataclasses.field(default_factory=list)  # nested prefix widths distilled too
    max_query_tokens: int = 32
    queries: str = ""  # distillation text, JSONL {"query", "source"}; '' takes the training pairs' queries
    max_queries: int = 20000  # every source but the largest is taken whole; the largest fills the rest
    drop_sources: list[str] = dataclasses.field(default_factory=list)  # sources of `queries` left out (ablations)
    batch_size: int = 128
    length_window: int = 1  # draw this many batches at once and cut them from the draw sorted by length (1: random batches)
    steps: int = 500
    lr: float = 1e-4
    warmup_steps: int = 20
    pool_kernel: str = "torch"
    seed: int = 0


@dataclasses.dataclass
class EvalSet:
    name: str
    corpus: str
    queries: str
    split: str = "test"  # 'dev' (for choosing settings) or 'test' (scored once, at the end)


@dataclasses.dataclass
class EvalConfig:
    sets: list[EvalSet] = dataclasses.field(default_factory=list)
    batch_size: int = 64
    latency_queries: int = 200
    baseline: str = "minilm"  # the off-the-shelf row
    split: str = "test"  # which sets to score: 'dev' while choosing settings, 'test' once at the end
    latency: bool = True  # measure query-encoding speed too

    def of_split(self, split: str) -> list[EvalSet]:
        sets = [s for s in self.sets if s.split == split]
        if not sets:
            raise ConfigError(f"eval.sets must name at least one {{name, corpus, queries, split}} set of split {split!r}")
        return sets


@dataclasses.dataclass
class DataConfig:
    train: str = ""  # pairs JSONL
    build: str = ""  # '' or 'debian': build the demo data into data_dir first when missing
    data_dir: str = "artifacts/data/debian"
    corpus_size: int = 5000
    test_queries: int = 1000
    faq_distractors: int = 1500
    wordnet_queries: int = 1000
    accept_unpinned: bool = False  # build from another python3.11-doc than sources.lock.json pins (else: an error)


@dataclasses.dataclass
class RunConfig:
    name: str = "run"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    stage1: Stage1Config = dataclasses.field(default_factory=Stage1Config)
    stage2: Stage2Config = dataclasses.field(default_factory=Stage2Config)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


def _convert(value, kind, field: str):
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, field)
    origin = typing.get_origin(kind)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{field} must be a list; got {value!r}")
        (item,) = typing.get_args(kind)
        return [_convert(v, item, f"{field}[{n}]") for n, v in enumerate(value)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{field} must be {kind.__name__}; got {value!r}")
    return value


def from_dict(cls, data: dict, section: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{section or 'config'} must be a table; got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{section + '.' if section else ''}{unknown[0]}: unknown field; known: {sorted(names)}")
    values = {k: _convert(v, hints[k], f"{section + '.' if section else ''}{k}") for k, v in data.items()}
    return cls(**values)


def _parse_override(text: str) -> tuple[list[str], object]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"--set takes section.field=value; got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string
    return key.strip().split("."), value


def load(path_or_recipe: str | Path, overrides: list[str] = ()) -> RunConfig:
    path = Path(path_or_recipe)
    if not path.exists() and (RECIPES / f"{path_or_recipe}.toml").exists():
        path = RECIPES / f"{path_or_recipe}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES.glob("*.toml"))
        raise ConfigError(f"config {str(path_or_recipe)!r} is neither a file nor a recipe name; recipes: {known}")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    for text in overrides:
        keys, value = _parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    config = from_dict(RunConfig, data)
    validate(config)
    return config


def validate(c: RunConfig) -> None:
    positive = {"stage1.batch_size": c.stage1.batch_size, "stage1.steps": c.stage1.steps, "stage1.grad_accum": c.stage1.grad_accum,
                "stage1.length_window": c.stage1.length_window, "stage1.max_query_tokens": c.stage1.max_query_tokens, "stage1.max_doc_tokens": c.stage1.max_doc_tokens,
                "stage2.batch_size": c.stage2.batch_size, "stage2.prune_texts": c.stage2.prune_texts, "stage2.steps": c.stage2.steps, "stage2.max_queries": c.stage2.max_queries,
                "stage2.rank_docs": c.stage2.rank_docs, "stage2.length_window": c.stage2.length_window}
    for field, value in positive.items():
        if value < 1:
            raise ConfigError(f"{field} must be >= 1; got {value}")
    if c.stage2.student_ffn < 0:
        raise ConfigError(f"stage2.student_ffn must be >= 0 (0 keeps every feed-forward neuron); got {c.stage2.student_ffn}")
    if not c.stage1.temperature > 0:
        raise ConfigError(f"stage1.temperature must be > 0; got {c.stage1.temperature}")
    if c.stage2.projection not in ("auto", "none"):
        raise ConfigError(f"stage2.projection must be 'auto' or 'none'; got {c.stage2.projection!r}")
    if c.stage2.w_mse < 0 or c.stage2.w_cos < 0 or c.stage2.w_mse + c.stage2.w_cos == 0:
        raise ConfigError(f"stage2.w_mse and stage2.w_cos must be >= 0, not both 0; got {c.stage2.w_mse}, {c.stage2.w_cos}")
    if c.stage2.rank_pool not in ("docs", "queries"):
        raise ConfigError(f"stage2.rank_pool must be 'docs' or 'queries'; got {c.stage2.rank_pool!r}")
    if c.stage2.w_rank < 0 or not c.stage2.rank_temperature > 0:
        raise ConfigError(f"stage2.w_rank must be >= 0 and stage2.rank_temperature > 0; got {c.stage2.w_rank}, {c.stage2.rank_temperature}")
    for field, dims in (("stage1.matryoshka", c.stage1.matryoshka), ("stage2.matryoshka", c.stage2.matryoshka)):
        if any(d < 1 for d in dims):
            raise ConfigError(f"{field} must list widths >= 1; got {dims}")
    if c.stage1.l2sp < 0:
        raise ConfigError(f"stage1.l2sp must be >= 0; got {c.stage1.l2sp}")
    splits = ("dev", "test")
    if c.eval.split not in splits:
        raise ConfigError(f"eval.split must be one of {splits}; got {c.eval.split!r}")
    for n, s in enumerate(c.eval.sets):
        if s.split not in splits:
            raise ConfigError(f"eval.sets[{n}].split must be one of {splits}; got {s.split!r}")
    if c.data.build not in ("", "debian"):
        raise ConfigError(f"data.build must be '' or 'debian'; got {c.data.build!r}")
    if not c.data.train and not c.data.build:
        raise ConfigError("data.train must name a pairs JSONL file (or set data.build = 'debian')")
