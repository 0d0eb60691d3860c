"""Render the deployable Triton model repository from model_repository/models templates.

The result is self-contained: every python model carries ``runtime/`` and
``kernels/`` next to its ``model.py``, the tokenizer, the ONNX encoder and the index
sit in the version folders, so the same folder could be mounted into an NGC
tritonserver container. Rendering is deterministic: the same inputs give
byte-identical configs. Every config.pbtxt is parsed as Triton's ModelConfig
protobuf before the repository is swapped in.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import jinja2
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from kernels.topk import NumpyTopK
from model_repository.runtime.files import atomic_folder, write_artifacts_manifest
from model_repository.runtime.index import resident_bytes
from model_repository.runtime.rendered import Rendered, ServingContext

from .export import ExportedTower
from .quantize import INT8_FILE

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "model_repository" / "models"
SHIPPED_PACKAGES = (ROOT / "model_repository" / "runtime", ROOT / "kernels")
SHIPPED_FOLDERS = {p.name for p in SHIPPED_PACKAGES} | {"__pycache__"}
PYTHON_MODELS = ("tokenizer", "query_encoder", "pool_normalize", "mips_topk")
# The ensembles' first step: the tokenizer's code with admission on (runtime.admission). Clients calling
# `tokenizer` directly take no admission ticket; one handed to them would never be given back.
ENSEMBLE_TOKENIZER = "ensemble_tokenizer"
TARGETS = ("cpu", "gpu")
ENCODERS = ("onnx", "torch", "tensorrt")
BATCHING = ("dynamic", "sequential")
POOLING_STEPS = ("separate", "encoder")
SEARCH_STEPS = ("separate", "encoder")
TORCH_ENCODER_FILES = ("config.json", "*.safetensors")  # the tower's weights, its projection included


@dataclasses.dataclass(frozen=True)
class ServingSettings:
    max_batch_size: int = dataclasses.field(default=128, metadata={"help": "Triton max_batch_size of every model (rows per executed batch)"})
    max_rows_per_request: int = dataclasses.field(default=64, metadata={"help": "most texts one request may carry"})
    # 0 on the CPU: a window makes a lone request wait it out at every batched step, and with 0 the batcher
    # still merges what queued while the instance was busy (benchmarks/results/window-2026-11-24/).
    max_queue_delay_us: int = dataclasses.field(default=-1, metadata={"help": "dynamic batcher: how long a request may wait for others (-1: auto, 0 on cpu, 500 on gpu)"})
    # No queue policy by default: under any default_queue_policy Triton 2.51's batcher leaves queued requests
    # waiting while their instance idles (benchmarks/results/tail-2026-11-23/). Either knob turns one on.
    max_queue_size: int = dataclasses.field(default=0, metadata={"help": "requests a model may queue before rejecting with UNAVAILABLE (0: unbounded, no queue policy; any policy brings Triton 2.51's batcher stalls, see docs/performance.md)"})
    queue_timeout_us: int = dataclasses.field(default=0, metadata={"help": "a request queued longer than this is rejected (0: never; any policy brings Triton 2.51's batcher stalls, see docs/performance.md)"})
    instances: int = dataclasses.field(default=1, metadata={"help": "instances of each python model"})
    max_chars: int = dataclasses.field(default=8192, metadata={"help": "longest accepted text, in characters"})
    intra_op_threads: int = dataclasses.field(default=0, metadata={"help": "ONNX Runtime intra-op threads (0: one per core)"})
    max_k: int = dataclasses.field(default=1000, metadata={"help": "largest k a retrieve request may ask for"})
    snippet_chars: int = dataclasses.field(default=240, metadata={"help": "length of the snippet returned per document"})
    target: str = dataclasses.field(default="cpu", metadata={"help": "cpu (ONNX Runtime, numpy) or gpu (TensorRT engine, Triton and CuPy kernels)"})
    pool_implementation: str = dataclasses.field(default="auto", metadata={"help": "pool_normalize: numpy or triton (auto: numpy on cpu, triton on gpu)"})
    topk_implementation: str = dataclasses.field(default="auto", metadata={"help": "mips_topk: numpy, faiss (cpu: faiss's scan for one query, numpy's for a batch), chunked, cupy or torch (auto: numpy on cpu, cupy on gpu)"})
    preferred_batch_sizes: str = dataclasses.field(default="8,16,32,64", metadata={"help": "gpu: the TensorRT encoder's preferred batch sizes"})
    pad_to_multiple: int = dataclasses.field(default=16, metadata={"help": "gpu: the tokenizer pads to a multiple of this many tokens"})
    encoder_implementation: str = dataclasses.field(default="auto", metadata={"help": "query_encoder: onnx (CPU), torch (the tower's weights through PyTorch: fp16 + CUDA graphs on gpu, float32 on cpu) or tensorrt (auto: onnx on cpu, tensorrt on gpu)"})
    encoder_cuda_graphs: int = dataclasses.field(default=1, metadata={"help": "gpu, encoder torch: capture one CUDA graph per (batch bucket, token multiple) at load (0: eager)"})
    encoder_batch_buckets: str = dataclasses.field(default="1,2,4,8,16,32,64,128", metadata={"help": "encoder torch: batches are padded up to one of these row counts"})
    # 1 s on the CPU: closed-loop bursts of up to 64 callers are never refused, and open loop at 3x capacity keeps
    # admitted answers within the budget (benchmarks/results/admission-wait-2026-12-07/). Off on the GPU: not measured.
    admission_budget_ms: float = dataclasses.field(default=-1, metadata={"help": "refuse at once (UNAVAILABLE) a request whose predicted wait, the rows in flight ahead of it times the measured service time of a row, exceeds this many ms, or whose own timeout it would miss (0: off; -1: auto, 1000 on cpu, 0 on gpu)"})
    # A batch of 2+ queries through torch's MKL GEMM: OpenBLAS's few-column SGEMM is slower for 2 than 1
    # (benchmarks/results/topk-cpu-2026-11-24/).
    topk_gemm: str = dataclasses.field(default="auto", metadata={"help": "mips_topk numpy: auto (OpenBLAS GEMV for one query, torch's MKL GEMM for 2+) or numpy (OpenBLAS for every batch)"})
    admission_ttl_s: float = dataclasses.field(default=5.0, metadata={"help": "an admitted request that never gets its answer step (cancelled, a stub killed) stops counting after this long"})
    # Sequential on the CPU: a batch of n short queries costs ~n queries on a core, so merging only makes
    # the first wait for the last (benchmarks/results/batching-2026-11-23/).
    encoder_batching: str = dataclasses.field(default="auto", metadata={"help": "query_encoder: dynamic (Triton's dynamic batcher merges queued requests) or sequential (one request per execution, in arrival order; no batcher); auto: dynamic on gpu or with a queue policy, sequential on cpu"})
    # Off by default: not worth its quality cost on a CPU without VNNI (benchmarks/results/int8-encoder-2026-11-24/).
    encoder_quantization: str = dataclasses.field(default="none", metadata={"help": "query_encoder on the CPU: none (float32) or int8 (ONNX Runtime dynamic quantization of the weights; 1.10x at batch 1 on an AVX2-only CPU, up to 3% nDCG@10: see docs/performance.md)"})
    # In the encoder's stub on the CPU: a step of its own is a python hop for microseconds of numpy
    # (benchmarks/results/pooling-step-2026-11-24/).
    pooling_step: str = dataclasses.field(default="auto", metadata={"help": "where pooling + L2 normalisation run: separate (the pool_normalize model, its own step) or encoder (inside the onnx query_encoder's stub, one python hop fewer); auto: encoder on cpu with the onnx encoder and numpy pooling, else separate"})
    # Opt-in: it saves a hop but holds the index twice, and one stub queues every request behind the slowest
    # (benchmarks/results/peer-documents-2026-12-04/, compare-100k-faiss-2026-12-06/).
    search_step: str = dataclasses.field(default="separate", metadata={"help": "where retrieve's search runs: separate (the mips_topk model, its own step) or encoder (inside the query_encoder's stub, which then pools too: cpu, numpy, faiss or chunked search, one index shard; mips_topk keeps a copy for direct calls)"})

    def resolved(self) -> dict:
        """The settings as rendered: concrete implementations, GPU-only knobs zeroed on the CPU."""
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {list(TARGETS)}; got {self.target!r}")
        gpu = self.target == "gpu"
        pool = {"auto": "triton" if gpu else "numpy"}.get(self.pool_implementation, self.pool_implementation)
        topk = {"auto": "cupy" if gpu else "numpy"}.get(self.topk_implementation, self.topk_implementation)
        encoder = {"auto": "tensorrt" if gpu else "onnx"}.get(self.encoder_implementation, self.encoder_implementation)
        if encoder not in ENCODERS or (encoder == "tensorrt" and not gpu):
            raise ValueError(f"encoder_implementation must be one of {list(ENCODERS)} (tensorrt on target gpu only); got {encoder!r}")
        buckets = sorted(int(x) for x in self.encoder_batch_buckets.split(",") if x.strip())
        if not buckets or buckets[0] < 1 or buckets[-1] < self.max_batch_size:
            raise ValueError(f"encoder_batch_buckets must be positive and reach max_batch_size {self.max_batch_size}; "
                             f"got {self.encoder_batch_buckets!r}")
        policy = bool(self.max_queue_size or self.queue_timeout_us)
        batching = {"auto": "dynamic" if gpu or policy else "sequential"}.get(self.encoder_batching, self.encoder_batching)
        if batching not in BATCHING:
            raise ValueError(f"encoder_batching must be one of {list(BATCHING)}; got {batching!r}")
        if batching == "sequential" and policy:
            raise ValueError(f"a queue policy (max_queue_size {self.max_queue_size}, queue_timeout_us {self.queue_timeout_us}) "
                             "needs the dynamic batcher on query_encoder, which holds the queue; got encoder_batching 'sequential'")
        sizes = [int(x) for x in self.preferred_batch_sizes.split(",") if x.strip()] if gpu else []
        if any(not 1 <= b <= self.max_batch_size for b in sizes):
            raise ValueError(f"preferred_batch_sizes must lie in [1, {self.max_batch_size}]; got {self.preferred_batch_sizes!r}")
        if self.max_queue_delay_us < -1:
            raise ValueError(f"max_queue_delay_us must be >= 0, or -1 for auto; got {self.max_queue_delay_us}")
        delay = self.max_queue_delay_us if self.max_queue_delay_us >= 0 else (500 if gpu else 0)
        if self.encoder_quantization not in ("none", "int8") or (self.encoder_quantization == "int8" and encoder != "onnx"):
            raise ValueError(f"encoder_quantization must be 'none' or 'int8' (int8 with the onnx encoder only); "
                             f"got {self.encoder_quantization!r} with encoder {encoder!r}")
        fusable = encoder == "onnx" and pool == "numpy"
        pooling_step = {"auto": "encoder" if fusable and not gpu else "separate"}.get(self.pooling_step, self.pooling_step)
        if pooling_step not in POOLING_STEPS or (pooling_step == "encoder" and not fusable):
            raise ValueError(f"pooling_step must be one of {list(POOLING_STEPS)} ('encoder' needs the onnx encoder and numpy "
                             f"pooling); got {pooling_step!r} with encoder {encoder!r} and pooling {pool!r}")
        if self.search_step not in SEARCH_STEPS or (self.search_step == "encoder" and (pooling_step != "encoder" or topk not in ("numpy", "faiss", "chunked"))):
            raise ValueError(f"search_step must be one of {list(SEARCH_STEPS)} ('encoder' needs pooling_step 'encoder' and the numpy, "
                             f"faiss or chunked search); got {self.search_step!r} with pooling_step {pooling_step!r} and search {topk!r}")
        if self.topk_gemm not in NumpyTopK.GEMMS:
            raise ValueError(f"topk_gemm must be one of {list(NumpyTopK.GEMMS)}; got {self.topk_gemm!r}")
        if (self.admission_budget_ms < 0 and self.admission_budget_ms != -1) or self.admission_ttl_s <= 0:
            raise ValueError(f"admission_budget_ms must be >= 0 (or -1 for auto) and admission_ttl_s > 0; "
                             f"got {self.admission_budget_ms} and {self.admission_ttl_s}")
        admission = self.admission_budget_ms if self.admission_budget_ms >= 0 else (0.0 if gpu else 1000.0)
        return {**dataclasses.asdict(self), "pool_implementation": pool, "topk_implementation": topk,
                "preferred_batch_sizes": sizes, "pad_to_multiple": self.pad_to_multiple if gpu else 0,
                "encoder_implementation": encoder, "encoder_device": "cuda" if gpu else "cpu",
                "encoder_dtype": "float16" if gpu else "float32", "encoder_cuda_graphs": self.encoder_cuda_graphs if gpu else 0,
                "encoder_batch_buckets": ",".join(map(str, buckets)), "encoder_batching": batching, "max_queue_delay_us": delay,
                "pooling_step": pooling_step, "search_step": self.search_step, "admission_budget_ms": admission}


def _t(name: str, dtype: str, dims: str) -> dict:
    return {"name": name, "dtype": dtype, "dims": dims}


def ensembles(dim: int, shard_count: int = 0, pooling_step: str = "separate", search_step: str = "separate") -> list[dict]:
    """``embed`` and ``retrieve``: ensemble_tokenizer -> query_encoder -> pool_normalize (-> search), or with
    ``pooling_step`` "encoder", ensemble_tokenizer -> query_encoder (-> search); with ``search_step`` "encoder"
    as well, retrieve is ensemble_tokenizer -> query_encoder, which searches."""
    tokenize = {"model": ENSEMBLE_TOKENIZER, "inputs": {"text": "TEXT"},
                "outputs": {"input_ids": "_input_ids", "attention_mask": "_attention_mask", "admission_ticket": "_admission_ticket"}}
    if pooling_step == "encoder":  # the encoder gives the ticket back and answers the embedding
        encode_steps = [tokenize]
        pool = {"model": "query_encoder", "inputs": {"input_ids": "_input_ids", "attention_mask": "_attention_mask",
                                                     "admission_ticket": "_admission_ticket"}}
    else:
        encode_steps = [tokenize, {"model": "query_encoder", "inputs": {"input_ids": "_input_ids", "attention_mask": "_attention_mask"},
                                   "outputs": {"last_hidden_state": "_last_hidden_state"}}]
        pool = {"model": "pool_normalize", "inputs": {"last_hidden_state": "_last_hidden_state", "attention_mask": "_attention_mask",
                                                      "admission_ticket": "_admission_ticket"}}
    topk_outputs = {"doc_ids": "DOC_IDS", "scores": "SCORES", "doc_keys": "DOC_KEYS", "titles": "TITLES",
                    "snippets": "SNIPPETS", "index_version": "INDEX_VERSION"}
    # retrieve's ticket comes back after its search, not at pooling: the rows admission bounds include the
    # search's queue
    untaken = {**pool, "inputs": {k: v for k, v in pool["inputs"].items() if k != "admission_ticket"}}
    if search_step == "encoder":  # the encoder searches, answers and gives retrieve's ticket back itself
        search = [{**pool, "inputs": {**pool["inputs"], "k": "K"}, "outputs": topk_outputs}]
    else:
        search = [{**untaken, "outputs": {"embedding": "_embedding"}}, *search_steps(shard_count, topk_outputs)]
    return [
        {
            "name": "embed",
            "inputs": [_t("TEXT", "TYPE_STRING", "1")],
            "outputs": [_t("EMBEDDING", "TYPE_FP32", str(dim))],
            "steps": [*encode_steps, {**pool, "outputs": {"embedding": "EMBEDDING"}}],
        },
        {
            "name": "retrieve",
            "inputs": [_t("TEXT", "TYPE_STRING", "1"), _t("K", "TYPE_INT32", "1")],
            "outputs": [_t("DOC_IDS", "TYPE_INT64", "-1"), _t("SCORES", "TYPE_FP32", "-1"), _t("DOC_KEYS", "TYPE_STRING", "-1"),
                        _t("TITLES", "TYPE_STRING", "-1"), _t("SNIPPETS", "TYPE_STRING", "-1"), _t("INDEX_VERSION", "TYPE_STRING", "1")],
            "steps": [*encode_steps, *search],
        },
    ]


def search_steps(shard_count: int, topk_outputs: dict) -> list[dict]:
    """One mips_topk step, or (sharded) one step per shard in parallel and a topk_merge step; the last
    step gives the admission ticket back."""
    ticket = {"admission_ticket": "_admission_ticket"}
    if shard_count < 2:
        return [{"model": "mips_topk", "inputs": {"embedding": "_embedding", "k": "K", **ticket}, "outputs": topk_outputs}]
    steps = [{"model": f"mips_topk_{i}", "inputs": {"embedding": "_embedding", "k": "K"},
              "outputs": {name: f"_{name}_{i}" for name in topk_outputs}} for i in range(shard_count)]
    merge_inputs = {"k": "K", **ticket, **{f"{name}_{i}": f"_{name}_{i}" for i in range(shard_count) for name in topk_outputs}}
    return [*steps, {"model": "topk_merge", "inputs": merge_inputs, "outputs": topk_outputs}]


def sources_fingerprint() -> str:
    """sha256 over the templates and every file shipped into the repository."""
    h = hashlib.sha256()
    for root in (TEMPLATES, *SHIPPED_PACKAGES):
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            h.update(path.relative_to(ROOT).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def parse_model_config(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _pb_string(value: str) -> str:
    """A quoted protobuf text-format string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def render_configs(serving: ServingContext) -> dict[str, str]:
    """model name -> config.pbtxt text, each checked as ModelConfig protobuf."""
    context = dataclasses.asdict(serving)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["pbstr"] = _pb_string
    shard_count = context["shard_count"]
    configs = {name: env.get_template(f"{name}/config.pbtxt.j2").render(context) for name in PYTHON_MODELS
               if not (shard_count > 1 and name == "mips_topk") and not (context["pooling_step"] == "encoder" and name == "pool_normalize")}
    configs[ENSEMBLE_TOKENIZER] = env.get_template("tokenizer/config.pbtxt.j2").render(
        {**context, "model_name": ENSEMBLE_TOKENIZER, "admits": True})
    for i, rows in enumerate(context["shard_rows"]):
        shard = {**context, "model_name": f"mips_topk_{i}", "shard": f"{i}/{shard_count}", "index_rows": rows,
                 "index_resident_bytes": resident_bytes({"count": rows, "dim": context["dim"]}, context["topk_implementation"])}
        if context["target"] == "gpu":
            shard["gpu_index"] = i  # shard i lives on GPU i
        configs[f"mips_topk_{i}"] = env.get_template("mips_topk/config.pbtxt.j2").render(shard)
    if shard_count > 1:
        configs["topk_merge"] = env.get_template("topk_merge/config.pbtxt.j2").render(context)
    for ensemble in ensembles(context["dim"], shard_count, context["pooling_step"], context["search_step"]):
        configs[ensemble["name"]] = env.get_template("ensemble.pbtxt.j2").render({**context, "ensemble": ensemble})
    for name, text in configs.items():
        try:
            parsed = parse_model_config(text)
        except text_format.ParseError as e:
            raise ValueError(f"rendered config of '{name}' is not a valid ModelConfig: {e}") from None
        if parsed.name != name:
            raise ValueError(f"rendered config of '{name}' names itself '{parsed.name}'")
    return configs


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def render_context(query_tower: ExportedTower, index_manifest: dict, settings: ServingSettings, encoder_bytes: int) -> ServingContext:
    q = query_tower.info
    return ServingContext(**{
        **settings.resolved(),
        "dim": q["dim"],
        "max_tokens": q["max_tokens"],
        "pooling": q["pooling"],
        "prefix": q.get("prefix", ""),
        "eos_id": "" if q.get("eos_id") is None else str(q["eos_id"]),
        "tokenizer_file": "tokenizer.json",
        "onnx_file": "model.onnx",
        "index_dir": "index",
        "query_tower_fingerprint": q["fingerprint"],
        "encoder_bytes": encoder_bytes,  # capacity planning reads these over gRPC
        "index_rows": index_manifest["count"],
        "index_dtype": index_manifest["dtype"],
        "index_resident_bytes": resident_bytes(index_manifest, settings.resolved()["topk_implementation"]),
    })


def render_repository(out: Path, query_tower: ExportedTower, index_dir: Path, settings: ServingSettings,
                      engine: Path | None = None, shards: list[Path] | None = None) -> Rendered:
    """Write the repository to ``out`` (replacing it whole) and return the resolved render config.

    Target ``gpu`` takes a TensorRT ``engine`` (model.plan) for the query encoder in
    place of the ONNX file, unless the encoder is ``torch`` (the tower's weights are
    linked in instead).
    """
    q = query_tower.info
    encoder = settings.resolved()["encoder_implementation"]
    if encoder == "tensorrt" and (engine is None or not Path(engine).is_file()):
        raise ValueError(f"encoder 'tensorrt' needs a TensorRT engine file (--engine model.plan); got {engine}. "
                         "Build one with `python -m build engine` inside NVIDIA's TensorRT container (docs/gpu.md), "
                         "or serve the tower through PyTorch with --encoder-implementation torch")
    index_manifest = json.loads((index_dir / "manifest.json").read_text(encoding="utf-8"))
    if index_manifest["query_tower_fingerprint"] != q["fingerprint"]:
        raise ValueError(
            f"index {index_dir} pairs with query tower {index_manifest['query_tower_fingerprint']}, not {q['fingerprint']}"
        )
    encoder_file = Path(engine) if encoder == "tensorrt" else query_tower.onnx_file
    if settings.resolved()["encoder_quantization"] == "int8":
        encoder_file = query_tower.folder / INT8_FILE
        if not encoder_file.exists():
            raise ValueError(f"encoder_quantization 'int8' needs {encoder_file}; `python -m build all --encoder-quantization int8` "
                             "makes it (build/quantize.py)")
    context = render_context(query_tower, index_manifest, settings, encoder_file.stat().st_size)
    shards = list(shards or [])
    if len(shards) > 1:
        manifests = [json.loads((f / "manifest.json").read_text(encoding="utf-8")) for f in shards]
        if any(m.get("shards_of") != index_manifest["index_version"] for m in manifests):
            raise ValueError(f"shards {[str(f) for f in shards]} are not all shards of index {index_manifest['index_version']}")
        if context.search_step == "encoder":
            raise ValueError(f"search_step 'encoder' searches one index in the encoder's stub; got {len(shards)} shards "
                             "(render sharded indexes with --search-step separate)")
        context = dataclasses.replace(context, shard_count=len(shards), shard_rows=[m["count"] for m in manifests],
                                      index_version=index_manifest["index_version"])
    configs = render_configs(context)
    resolved = Rendered(context, sources_fingerprint(), q, {k: v for k, v in index_manifest.items() if k != "shards"})
    if (out / "render.json").exists() and (out / "render.json").read_text(encoding="utf-8") == resolved.to_json():
        return resolved  # same inputs: keep the repository a running server may be using
    with atomic_folder(out) as tmp:
        for name, text in configs.items():
            version = tmp / name / "1"
            version.mkdir(parents=True)
            (tmp / name / "config.pbtxt").write_text(text, encoding="utf-8")
            source = "mips_topk" if name.startswith("mips_topk_") else "tokenizer" if name == ENSEMBLE_TOKENIZER else name
            if (source in PYTHON_MODELS or source == "topk_merge") and not (encoder == "tensorrt" and name == "query_encoder"):
                shutil.copy2(TEMPLATES / source / "model.py", version / "model.py")
                for package in SHIPPED_PACKAGES:
                    shutil.copytree(package, version / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for tokenizer in ("tokenizer", ENSEMBLE_TOKENIZER):  # each checks its tokenizer.json before it loads
            _link_or_copy(query_tower.tokenizer_file, tmp / tokenizer / "1" / "tokenizer.json")
            write_artifacts_manifest(tmp / tokenizer / "1", [tmp / tokenizer / "1" / "tokenizer.json"])
        if encoder == "tensorrt":
            _link_or_copy(Path(engine), tmp / "query_encoder" / "1" / "model.plan")
        else:
            _link_or_copy(encoder_file, tmp / "query_encoder" / "1" / "model.onnx")  # float32, or the int8 graph
        if encoder == "torch":  # the tower's own weights, read by runtime/torch_encoder.py
            for pattern in TORCH_ENCODER_FILES:
                for f in sorted(Path(q["source"]).glob(pattern)):
                    _link_or_copy(f, tmp / "query_encoder" / "1" / "torch" / f.name)
        searchers = [(f"mips_topk_{i}", f) for i, f in enumerate(shards)] if len(shards) > 1 else [("mips_topk", index_dir)]
        if context.search_step == "encoder":
            searchers.append(("query_encoder", index_dir))
        for model, folder in searchers:
            for f in sorted(folder.iterdir()):
                _link_or_copy(f, tmp / model / "1" / "index" / f.name)
        # What the encoder loads, checked against this before it loads (an index has its own manifest).
        encoder_folder = tmp / "query_encoder" / "1"
        write_artifacts_manifest(encoder_folder, [f for f in encoder_folder.rglob("*") if f.is_file() and f.name != "model.py"
                                                  and f.relative_to(encoder_folder).parts[0] not in {*SHIPPED_FOLDERS, "index"}])
        resolved.write(tmp)
    return resolved


def render_variant(repository: Path, out: Path, settings: ServingSettings) -> Rendered:
    """``repository``'s own query tower and index (from its render.json, in the artifacts folder that holds it)
    rendered into ``out`` with ``settings``: the same model and documents served another way, for a side-by-side
    run (``benchmarks compare --variant``). Nothing is encoded again."""
    built = Rendered.read(repository)
    if built.context.shard_count > 1:
        raise ValueError(f"{repository} is sharded ({built.context.shard_count} shards): render a variant of it with "
                         "`python -m build --shards N` and the settings instead")
    artifacts = repository.parent
    tower = artifacts / "towers" / built.query_tower["fingerprint"]
    index = artifacts / "index" / built.index["index_version"]
    for what, folder in (("query tower", tower), ("index", index)):
        if not folder.is_dir():
            raise FileNotFoundError(f"the {what} {repository} was rendered from is not at {folder}")
    if out.resolve() == repository.resolve():
        raise ValueError(f"--out {out} is the repository itself: a variant goes into a folder of its own")
    return render_repository(out, ExportedTower(tower), index, settings)
