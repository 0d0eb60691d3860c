"""python -m build [all|corpus|export|index|render] — turn checkpoints and text into a deployable repository.

Every step reuses what an earlier run built from the same inputs, so a second
`make serve` takes seconds.

    python -m build deploy-index INDEX_DIR [--url 127.0.0.1:8001]   a new mips_topk version, switched to live
    python -m build rollback [--url 127.0.0.1:8001]                 back to the previous version
    python -m build int8-report --out DIR/int8.json                 the int8 query encoder's quality cost and speed
    python -m build wordnet-corpus [--out DIR]                      ~117k WordNet glosses: a corpus for serving at scale
    python -m build variant --out DIR [serving settings]            a rendered repository's tower and index, served another way
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import sys
import time
from pathlib import Path

from kernels.pooling import Pooling
from model_repository.runtime.files import sha256_file
from model_repository.runtime.index import IndexMismatch

from . import config as cfg
from training.corpus import CorpusError, build_python_docs, is_built, read_corpus
from training.tower_format import read_spec

from .export import ExportedTower, ExportMismatch, default_tower, export_tower
from .index import build_index
from .quantize import INT8_INFO, QuantizationError, quantized_onnx
from .render import render_repository
from .tensorrt import TensorRTUnavailable


def log(message: str) -> None:
    print(f"[build] {message}", file=sys.stderr, flush=True)


def built_corpus(c: cfg.BuildConfig) -> str | None:
    """The --corpus the repository in ``c.artifacts`` was last rendered from (its build.json), if not the default."""
    try:
        corpus = json.loads((c.repository / "build.json").read_text(encoding="utf-8")).get("corpus")
    except (OSError, ValueError):
        return None
    return None if corpus in (None, "None") else corpus


def corpus_step(c: cfg.BuildConfig) -> tuple[Path, list[dict], str]:
    if c.corpus is None and (earlier := built_corpus(c)):
        # without this, a re-render of e.g. artifacts/wordnet silently re-encoded the default corpus into it
        raise CorpusError(f"--corpus is not given, but {c.repository} was built from --corpus {earlier}: pass "
                          f"--corpus {earlier} to rebuild it, or a new --artifacts folder for the default corpus")
    if c.corpus is not None:
        path = c.corpus
    else:
        folder = c.artifacts / "corpus" / "python-docs"
        if not is_built(folder):
            log("building the default corpus from Debian python3.11-doc")
            m = build_python_docs(folder, c.artifacts / "cache", c.deb, c.accept_unpinned)
            log(f"corpus: {m['documents']} documents, {m['queries']} FAQ queries ({m['source']['package']} {m['source']['version']})")
        path = folder / "corpus.jsonl"
    return path, read_corpus(path), sha256_file(path)


def export_step(c: cfg.BuildConfig, docs: list[dict]) -> tuple[ExportedTower, ExportedTower]:
    check_texts = [d["text"] for d in docs[:24]] + ["how do I copy a file in python", "x"]
    query_source = c.query_tower or default_tower()
    towers = []
    for role, source in (("query", query_source), ("doc", c.doc_tower or query_source)):
        t0 = time.monotonic()
        spec = read_spec(source, for_serving=True)  # a training checkpoint says how it pools and truncates
        pooling = Pooling.parse(spec.pooling if spec else c.pooling)
        tower = export_tower(source, c.artifacts / "towers", pooling, spec.max_tokens if spec else c.max_tokens, check_texts,
                             prefix=spec.prefix if spec else "", eos_id=spec.eos_id if spec and spec.append_eos else None)
        check = tower.info["check"]
        log(f"{role} tower {tower.info['fingerprint']}: ONNX vs PyTorch min cosine {check['min_cosine']:.7f} "
            f"({time.monotonic() - t0:.1f} s) -> {tower.folder}")
        towers.append(tower)
    return towers[0], towers[1]


def engine_path(c: cfg.BuildConfig, query: ExportedTower) -> Path:
    """Where the engine step writes the query tower's TensorRT engine and the gpu target reads it."""
    return c.engine or c.artifacts / "trt" / query.info["fingerprint"] / "model.plan"


def engine_step(c: cfg.BuildConfig, settings, query: ExportedTower, docs: list[dict]) -> Path:
    """TensorRT engine for the query tower (refuses clearly where TensorRT is not installed)."""
    from model_repository.runtime.text import TextTokenizer

    from .tensorrt import EngineConfig, Profile, build_engine

    max_tokens = -(-query.info["max_tokens"] // settings.pad_to_multiple) * settings.pad_to_multiple
    profile = Profile(max_batch=settings.max_batch_size, max_seq=max_tokens, opt_seq=min(32, max_tokens))
    config = EngineConfig(precision=c.precision, profiles=(profile,), timing_cache=c.artifacts / "trt" / "timing.cache")
    plan = engine_path(c, query)
    tokenizer = TextTokenizer(query.tokenizer_file, query.info["max_tokens"], settings.pad_to_multiple,
                              query.info.get("prefix", ""), query.info.get("eos_id"))
    info = build_engine(query.onnx_file, plan, config, settings.max_batch_size, max_tokens,
                        calibration_texts=[d["title"] for d in docs], tokenize=tokenizer)
    log(f"TensorRT {info['tensorrt']} engine ({info['precision']}, {info['bytes']} bytes) -> {plan}")
    return plan


def run(c: cfg.BuildConfig, settings, steps: str) -> Path:
    corpus_path, docs, corpus_sha = corpus_step(c)
    if steps == "corpus":
        return corpus_path
    query, doc = export_step(c, docs)
    if steps == "export":
        return query.folder
    if steps == "engine":
        return engine_step(c, settings, query, docs)
    index_dir = build_index(docs, corpus_sha, doc, query.info["fingerprint"], c.artifacts / "index", c.encode_batch_size,
                            compression=c.index_compression, rescore=c.rescore)
    log(f"index {index_dir.name}: {len(docs)} documents -> {index_dir}")
    if steps == "index":
        return index_dir
    engine = engine_path(c, query) if settings.target == "gpu" else None
    if settings.encoder_quantization == "int8":
        int8 = quantized_onnx(query, [d["text"] for d in docs[:24]] + ["how do I copy a file in python", "x"])
        check = json.loads((query.folder / INT8_INFO).read_text(encoding="utf-8"))["check"]
        log(f"int8 query encoder: min cosine to float32 {check['min_cosine']:.4f} on {check['texts']} texts -> {int8}")
    shards = None
    if c.shards > 1:
        from .shards import split_index

        shards = split_index(index_dir, c.shards, c.artifacts / "shards" / index_dir.name / str(c.shards))
        log(f"index split into {len(shards)} shards -> {shards[0].parent}")
    render_repository(c.repository, query, index_dir, settings, engine, shards)
    build_json = json.dumps({k: str(v) for k, v in dataclasses.asdict(c).items()}, indent=2, sort_keys=True) + "\n"
    (c.repository / "build.json").write_text(build_json, encoding="utf-8")
    log(f"model repository -> {c.repository}")
    return c.repository


def cluster_main(argv: list[str]) -> int:
    """k8s: Kubernetes manifests for N replicas; shards: split an index into one shard per GPU."""
    from .k8s import ClusterSettings, render_manifests
    from .shards import split_index

    parser = argparse.ArgumentParser(prog="python -m build k8s|shards")
    parser.add_argument("command", choices=["k8s", "shards"])
    for f in dataclasses.fields(ClusterSettings):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default), default=f.default,
                            help=f"k8s (default: {f.default})")
    parser.add_argument("--index", type=Path, help="shards: the index folder to split")
    parser.add_argument("--count", type=int, default=2, help="shards: how many (one per GPU)")
    parser.add_argument("--out", type=Path, help="k8s: the manifest file; shards: the folder (default under artifacts/)")
    args = parser.parse_args(argv)
    try:
        if args.command == "k8s":
            out = args.out or Path("artifacts/k8s/scalingnote.yaml")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render_manifests(ClusterSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ClusterSettings)})),
                           encoding="utf-8")
        else:
            if args.index is None:
                parser.error("shards needs --index")
            out = args.out or Path("artifacts/shards") / args.index.name
            for folder in split_index(args.index, args.count, out):
                log(f"shard {folder}")
    except (ValueError, IndexMismatch, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def deploy_main(argv: list[str]) -> int:
    from .deploy import DeployError, deploy_index, holders, index_of_version, rollback

    parser = argparse.ArgumentParser(prog="python -m build deploy-index|rollback")
    parser.add_argument("command", choices=["deploy-index", "rollback"])
    parser.add_argument("index", nargs="?", type=Path, help="deploy-index: the index folder (from `python -m build index`)")
    parser.add_argument("--repository", type=Path, default=Path("artifacts/model_repository"))
    parser.add_argument("--url", default="127.0.0.1:8001", help="the running server's gRPC address")
    args = parser.parse_args(argv)
    try:
        if args.command == "deploy-index":
            if args.index is None:
                parser.error("deploy-index needs the index folder")
            version = deploy_index(args.repository, args.index, args.url)
        else:
            version = rollback(args.repository, args.url)
    except (DeployError, IndexMismatch, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log(f"{' and '.join(holders(args.repository))} version {version} (index {index_of_version(args.repository, version)}) "
        f"is serving on {args.url}")
    return 0


def synthetic_main(argv: list[str]) -> int:
    """synthetic: a random-init tower of a real shape, a random index, a rendered repository (speed runs)."""
    from .render import ServingSettings
    from .synthetic import SHAPES, build_synthetic

    parser = argparse.ArgumentParser(prog="python -m build synthetic", description=synthetic_main.__doc__)
    parser.add_argument("command", choices=["synthetic"])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="minilm", help="the tower's shape (random weights)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="documents in the random index")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per query")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/synthetic-run"))
    cfg.add_serving_arguments(parser)
    args = parser.parse_args(argv)
    settings = ServingSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServingSettings)})
    try:
        repository = build_synthetic(args.artifacts, args.shape, args.rows, settings, args.max_tokens)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(repository)
    return 0


def variant_main(argv: list[str]) -> int:
    """variant: a rendered repository's own tower and index, rendered again into --out with other serving settings
    (every setting not given takes its default, as in `python -m build`); nothing is encoded again."""
    from .render import ServingSettings, render_variant

    parser = argparse.ArgumentParser(prog="python -m build variant", description=variant_main.__doc__)
    parser.add_argument("command", choices=["variant"])
    parser.add_argument("--repository", type=Path, default=Path("artifacts/model_repository"), help="the rendered repository it starts from")
    parser.add_argument("--out", type=Path, required=True, help="the variant's repository folder (replaced whole)")
    cfg.add_serving_arguments(parser)
    args = parser.parse_args(argv)
    try:
        resolved = render_variant(args.repository, args.out,
                                  ServingSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServingSettings)}))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log(f"{args.out}: the tower and index of {args.repository}, " + ", ".join(
        f"{k} {getattr(resolved.context, k)}" for k in ("encoder_batching", "max_queue_delay_us", "admission_budget_ms",
                                                       "pooling_step", "search_step")))
    print(args.out)
    return 0


def wordnet_corpus_main(argv: list[str]) -> int:
    """wordnet-corpus: every WordNet synset's gloss as a corpus (a real ~117k-document index for speed runs)."""
    from .wordnet_corpus import build_wordnet_corpus

    parser = argparse.ArgumentParser(prog="python -m build wordnet-corpus", description=wordnet_corpus_main.__doc__)
    parser.add_argument("command", choices=["wordnet-corpus"])
    parser.add_argument("--out", type=Path, default=Path("artifacts/corpus/wordnet"), help="folder for corpus.jsonl and manifest.json")
    parser.add_argument("--cache", type=Path, default=Path("artifacts/cache"), help="where the wordnet-base .deb is downloaded")
    args = parser.parse_args(argv)
    try:
        m = build_wordnet_corpus(args.out, args.cache)
    except (CorpusError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log(f"{m['documents']} documents from {m['source']['deb']} ({m['source']['licence']})")
    print(args.out / "corpus.jsonl")
    return 0


def int8_report_main(argv: list[str]) -> int:
    """int8-report: float32 against int8 query encoder on a recipe's dev sets (quality and speed)."""
    from model_repository.runtime.provenance import git_commit, machine
    from training.config import load
    from training.evaluate import EMBEDDING_CACHE

    from .quantize import markdown, plot, report

    parser = argparse.ArgumentParser(prog="python -m build int8-report", description=int8_report_main.__doc__)
    parser.add_argument("command", choices=["int8-report"])
    parser.add_argument("--recipe", default="cpu-small", help="its [[eval.sets]] of split 'dev' are scored (never the test sets)")
    parser.add_argument("--query-tower", type=Path, default=None, help="checkpoint folder (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--doc-tower", type=Path, default=None, help="builds the index side (default: the query tower)")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds; the median is reported")
    parser.add_argument("--out", type=Path, required=True, help="JSON; .md and .png are written next to it")
    args = parser.parse_args(argv)
    try:
        sets = [s for s in load(args.recipe).eval.sets if s.split == "dev"]
        if not sets:
            raise ValueError(f"recipe {args.recipe} has no eval set of split 'dev'")
        c = cfg.BuildConfig(artifacts=args.artifacts, query_tower=args.query_tower, doc_tower=args.doc_tower)
        _, docs, _ = corpus_step(c)
        query, _ = export_step(c, docs)
        result = report(query, Path(args.doc_tower or args.query_tower or default_tower()), sets, EMBEDDING_CACHE,
                        rounds=args.rounds, log=log)
    except (CorpusError, ExportMismatch, FileNotFoundError, ValueError, QuantizationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.update(recipe=args.recipe, git_commit=git_commit(), machine=machine(),
                  command="python -m build " + " ".join(argv))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    print(f"results: {args.out}\nplot:    {plot(result, args.out.with_suffix('.png'))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "int8-report":
        return int8_report_main(argv)
    if argv and argv[0] == "synthetic":
        return synthetic_main(argv)
    if argv and argv[0] == "variant":
        return variant_main(argv)
    if argv and argv[0] == "wordnet-corpus":
        return wordnet_corpus_main(argv)
    if argv and argv[0] in ("deploy-index", "rollback"):
        return deploy_main(argv)
    if argv and argv[0] in ("k8s", "shards"):
        return cluster_main(argv)
    parser = argparse.ArgumentParser(prog="python -m build", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", nargs="?", default="all", choices=["all", "corpus", "export", "index", "engine", "render"],
                        help="run the pipeline up to and including this step (default: all)")
    cfg.add_arguments(parser)
    args = parser.parse_args(argv)
    c, settings = cfg.from_args(args)
    c.artifacts.mkdir(parents=True, exist_ok=True)
    with open(c.artifacts / ".build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another build is running in {c.artifacts}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            out = run(c, settings, "all" if args.step == "render" else args.step)
        except (CorpusError, ExportMismatch, FileNotFoundError, ValueError, TensorRTUnavailable, QuantizationError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
