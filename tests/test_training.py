"""training/: both stages on tiny random-initialised models, on real text (the Python FAQ).

Fast CPU checks of behaviour: the losses fall, 2 gloo processes equal 1, checkpoints
round-trip, the Triton pooling kernel trains like the torch reference, the distilled
student exported through build/ serves the embeddings it computes in-process, and
bad configuration or data is refused with the field named.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.corpus import build_python_docs, is_built
from model_repository.launcher import free_port
from model_repository.runtime.rendered import Rendered
from tests.conftest import ARTIFACTS, DEVICE, ROOT
from training import config as tconfig
from training import evaluate, stage1, stage2
from training.__main__ import main as training_main
from training.config import ConfigError, Stage1Config, Stage2Config
from training.data import DataError, group_batches, length_windows, read_eval_queries, read_pairs
from training.evaluate import retrieval_metrics
from training.tower_format import PROJECTION_FILE, TowerSpec
from training.towers import Tower, TowerError, packaged_minilm

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _tiny(folder: Path, kind: str, hidden: int = 64, seed: int = 0) -> Path:
    """A 2-layer random model with all-MiniLM-L6-v2's tokenizer; dropout off so runs are deterministic."""
    from transformers import AutoModel, BertConfig, Qwen2Config

    torch.manual_seed(seed)
    common = dict(vocab_size=30522, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=2 * hidden)
    if kind == "bert":
        cfg = BertConfig(**common, max_position_embeddings=256, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    else:  # a decoder LLM: last-token pooling, EOS appended ([SEP] plays EOS with this tokenizer)
        cfg = Qwen2Config(**common, num_key_value_heads=2, max_position_embeddings=256, eos_token_id=102, pad_token_id=0)
    AutoModel.from_config(cfg).save_pretrained(str(folder))
    for name in TOKENIZER_FILES:
        if (packaged_minilm() / name).exists():
            shutil.copy(packaged_minilm() / name, folder / name)
    if kind != "bert":
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps(tok | {"eos_token": "[SEP]"}))
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory.mktemp("tiny-qwen"), "qwen")


@pytest.fixture(scope="module")
def faq_pairs(tmp_path_factory) -> Path:
    """Python FAQ question -> answer pairs: real text, each its own group."""
    folder = ARTIFACTS / "corpus" / "python-docs"
    if not is_built(folder):
        build_python_docs(folder, ARTIFACTS / "cache")
    docs = {json.loads(line)["id"]: json.loads(line) for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines()}
    queries = [json.loads(line) for line in (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [{"query": q["query"], "positive": docs[q["positive"]]["text"], "group": q["positive"]} for q in queries]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _quick(**kw) -> dict:
    base = dict(max_query_tokens=24, max_doc_tokens=48, batch_size=8, lr=1e-3, warmup_steps=1, temperature=0.1)
    return base | kw


def test_stage1_loss_falls_and_towers_round_trip(tiny_bert, faq_pairs, tmp_path):
    c = Stage1Config(model=str(tiny_bert), steps=30, **_quick())
    m = stage1.train(c, faq_pairs, tmp_path / "s1")
    assert m["loss_last10_mean"] < 0.8 * m["loss_first10_mean"], m
    assert (tmp_path / "s1" / "loss.png").stat().st_size > 0
    card = json.loads((tmp_path / "s1" / "run_card.json").read_text())
    assert card["config"]["steps"] == 30 and card["inputs"]["train"]["sha256"] and card["git"]["commit"]
    # Untied towers: after training the two copies differ.
    q, d = Tower.load(tmp_path / "s1" / "query"), Tower.load(tmp_path / "s1" / "doc")
    assert q.spec.max_tokens == 24 and d.spec.max_tokens == 48 and q.spec.pooling == "mean"
    qw, dw = q.model.embeddings.word_embeddings.weight, d.model.embeddings.word_embeddings.weight
    assert not torch.equal(qw, dw)
    # Round trip: save the loaded tower again, load it again, same embeddings.
    texts = [json.loads(line)["query"] for line in faq_pairs.read_text().splitlines()[:10]]
    before = q.encode(texts)
    q.save(tmp_path / "again")
    np.testing.assert_allclose(Tower.load(tmp_path / "again").encode(texts), before, atol=1e-6)


def test_stage1_decoder_with_lora_checkpointing_and_hard_negatives(tiny_qwen, faq_pairs, tmp_path):
    # 20 steps: the first and last 10 that the loss is compared over do not overlap
    c = Stage1Config(model=str(tiny_qwen), steps=20, lora_r=4, lora_alpha=8, gradient_checkpointing=True,
                     hard_negatives=1, mine_pool=64, mine_every=6, **_quick(lr=5e-3))
    m = stage1.train(c, faq_pairs, tmp_path / "s1")
    assert m["loss_last10_mean"] < m["loss_first10_mean"], m
    saved = tmp_path / "s1" / "query"
    spec = json.loads((saved / "tower.json").read_text())
    assert spec["pooling"] == "last_token" and spec["append_eos"] is True
    assert not list(saved.glob("adapter_*")), "LoRA must be merged into the saved weights"
    tower = Tower.load(saved)
    ids = tower.tokenize(["how do I copy a file?", "x"])["input_ids"]
    mask = tower.tokenize(["how do I copy a file?", "x"])["attention_mask"]
    last = mask.sum(dim=1) - 1
    assert (ids[torch.arange(2), last] == 102).all(), "EOS appended after the text, before right padding"


def test_mined_hard_negatives_exclude_the_group(tiny_bert, faq_pairs):
    towers = stage1.load_towers(Stage1Config(model=str(tiny_bert), **_quick()))
    pairs = read_pairs(faq_pairs)[:40]
    mined = stage1.mine_hard_negatives(towers, pairs, 3)
    for pair, negatives in zip(pairs, mined):
        assert len(negatives) == 3 and pair.positive not in negatives


def test_group_batches_never_mix_a_group_and_are_deterministic():
    from training.data import Pair

    pairs = [Pair(f"q{i}", f"d{i}", (), f"g{i % 7}") for i in range(50)]
    a, b = group_batches(pairs, 7, seed=3), group_batches(pairs, 7, seed=3)
    for _ in range(30):
        batch = next(a)
        assert batch == next(b)
        assert len({pairs[i].group for i in batch}) == 7
    with pytest.raises(DataError, match=r"batch_size must be <= the number of distinct groups \(7\); got 8"):
        next(group_batches(pairs, 8, seed=0))


def test_length_windows_keep_groups_apart_lose_no_row_and_pad_less():
    """Stage 1's length windows re-cut group batches: window 1 passes them through; a window keeps one
    row a group in every batch, trains on every drawn row (only a few wait for the next window), is the
    same for the same seed, and cuts batches of neighbouring lengths, so the documents pad less."""
    from collections import Counter

    from training.data import Pair

    rng = np.random.default_rng(2)
    pairs = [Pair(f"q{i}", "d" * int(rng.integers(5, 400)), (), f"g{i % 40}") for i in range(400)]
    lengths, groups = [len(p.positive) for p in pairs], [p.group for p in pairs]
    plain, same = group_batches(pairs, 8, seed=1), length_windows(group_batches(pairs, 8, seed=1), lengths, groups, 1, 1)
    for _ in range(20):
        assert next(same) == next(plain)

    drawn: list[int] = []

    def recorded():
        for batch in group_batches(pairs, 8, seed=1):
            drawn.extend(batch)
            yield batch

    windowed, again = length_windows(recorded(), lengths, groups, 6, 1), length_windows(group_batches(pairs, 8, 1), lengths, groups, 6, 1)
    trained: Counter = Counter()
    padded = {1: 0, 6: 0}
    for _ in range(600):
        batch = next(windowed)
        assert batch == next(again)
        assert len(batch) == 8 and len({groups[i] for i in batch}) == 8
        trained.update(batch)
        padded[6] += max(lengths[i] for i in batch) * 8
        assert not trained - Counter(drawn)  # nothing trained that was not drawn, nothing twice
        assert sum((Counter(drawn) - trained).values()) <= 7 * 8  # at most a window and its waiting rows untrained
    plain = group_batches(pairs, 8, seed=1)
    padded[1] = sum(max(lengths[i] for i in next(plain)) * 8 for _ in range(600))
    assert padded[6] < 0.7 * padded[1], padded


def test_stage1_with_a_length_window_pads_documents_less_and_still_learns(tiny_bert, faq_pairs, tmp_path):
    # FAQ answers run from one line to pages: a cap of 256 tokens leaves their lengths apart.
    c = Stage1Config(model=str(tiny_bert), steps=30, **_quick(max_doc_tokens=256))
    plain = stage1.train(c, faq_pairs, tmp_path / "plain")
    windowed = stage1.train(dataclasses.replace(c, length_window=4), faq_pairs, tmp_path / "windowed")
    assert 1.0 <= windowed["doc_padded_tokens_per_real_token"] < plain["doc_padded_tokens_per_real_token"] - 0.1, (windowed, plain)
    assert windowed["loss_last10_mean"] < 0.8 * windowed["loss_first10_mean"], windowed


def _run_ddp(args: list[str], nproc: int, env_extra: dict | None = None) -> dict:
    script = str(ROOT / "tests" / "assets" / "ddp_step.py")
    # On the CPU for every process count, also on a GPU machine: the test compares ranks, and
    # a GPU run against a CPU one would add the devices' floating-point differences.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env_extra or {})}
    if nproc == 1:
        cmd = [sys.executable, script, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), script, *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(args[2])


def test_two_gloo_processes_equal_one_on_the_same_global_batch(tiny_bert, faq_pairs, tmp_path):
    one = _run_ddp([str(tiny_bert), str(faq_pairs), str(tmp_path / "one.pt"), "8"], 1)
    two = _run_ddp([str(tiny_bert), str(faq_pairs), str(tmp_path / "two.pt"), "8"], 2)
    assert two["world"] == 2 and one["world"] == 1
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert one["grads"].keys() == two["grads"].keys()
    for name, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], g, atol=2e-6, rtol=1e-4, msg=name)
    # The comparison can fail: with negatives from the local rank only, loss and gradients differ.
    bug = _run_ddp([str(tiny_bert), str(faq_pairs), str(tmp_path / "bug.pt"), "8"], 2, {"LOCAL_NEGATIVES": "1"})
    assert bug["loss"] != pytest.approx(one["loss"], rel=1e-3)
    worst = max(float((bug["grads"][n] - g).abs().max()) for n, g in one["grads"].items())
    assert worst > 1e-4


def test_stage2_in_two_gloo_processes_splits_each_batch_and_ends_with_the_one_process_student(tiny_bert, faq_pairs, tmp_path):
    """Under torchrun, stage 2 used to train the same whole batches on every rank (N times the work, no
    speed-up). Each rank now computes its half of a batch drawn alike, DDP averages the gradients, and
    the student equals the one-process student on the same global batches (score distillation on)."""
    teacher = tmp_path / "teacher"
    Tower.load(tiny_bert, spec=TowerSpec(max_tokens=16)).save(teacher)

    def run(nproc: int, env: dict | None = None) -> dict:
        out = tmp_path / f"s2-{nproc}-{len(env or {})}.pt"
        script = str(ROOT / "tests" / "assets" / "ddp_stage2.py")
        args = [str(teacher), str(faq_pairs), str(out), "16"]
        environ = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
        cmd = [sys.executable, script, *args] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), script, *args]
        r = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
        return torch.load(out)

    one, two = run(1), run(2)
    assert one["metrics"]["rows_per_process_step"] == 16 and two["metrics"]["rows_per_process_step"] == 8
    assert two["metrics"]["loss_first"] == pytest.approx(one["metrics"]["loss_first"], rel=1e-4)
    for name, w in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], w, atol=2e-5, rtol=1e-4, msg=name)
    # It can fail: ranks that step on their own half without averaging end apart from one process.
    apart = run(2, {"NO_DDP": "1"})
    assert max(float((apart["weights"][n] - w).abs().max()) for n, w in one["weights"].items()) > 1e-3


def test_ranks_share_a_gpu_only_through_gloo_on_the_cpu():
    from training.common import placement

    assert placement(cuda_devices=0, local_world=1, local_rank=0) == ("gloo", "cpu")
    assert placement(0, 2, 1) == ("gloo", "cpu")
    assert placement(1, 1, 0) == ("nccl", "cuda:0")
    assert placement(1, 2, 1) == ("gloo", "cpu")  # NCCL refuses two ranks on one GPU
    assert placement(8, 8, 5) == ("nccl", "cuda:5")


def test_triton_pooling_kernel_trains_like_the_torch_reference(tiny_bert):
    texts = ["How do I make an executable from a Python script?", "Why is Python slow?", "x"]
    grads = {}
    for kernel in ("torch", "triton"):
        torch.manual_seed(0)
        tower = Tower.load(tiny_bert, spec=TowerSpec(max_tokens=16), kernel=kernel).to(DEVICE)  # compiled kernels need CUDA tensors
        emb = tower(**{k: v.to(DEVICE) for k, v in tower.tokenize(texts).items()})
        (emb * torch.linspace(-1, 1, emb.shape[1], device=DEVICE)).sum().backward()
        grads[kernel] = (emb.detach().cpu(), tower.model.embeddings.word_embeddings.weight.grad.cpu())
    torch.testing.assert_close(grads["triton"][0], grads["torch"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads["triton"][1], grads["torch"][1], atol=1e-5, rtol=1e-4)


def test_l2sp_keeps_the_towers_near_their_start(tiny_bert, faq_pairs, tmp_path):
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    anchor = stage1.L2SP([w], 0.5)
    assert float(anchor()) == 0.0
    with torch.no_grad():
        w += torch.tensor([0.1, -0.2])
    anchor().backward()
    assert torch.allclose(w.grad, torch.tensor([0.1, -0.2]))  # d/dw 0.5 * d^2 = d

    def drift(l2sp: float) -> float:
        c = Stage1Config(model=str(tiny_bert), steps=8, batch_size=8, lr=1e-3, warmup_steps=0, l2sp=l2sp)
        stage1.train(c, faq_pairs, tmp_path / f"s1-{l2sp}")
        start = stage1.load_towers(Stage1Config(model=str(tiny_bert))).query.state_dict()
        end = Tower.load(tmp_path / f"s1-{l2sp}" / "query").state_dict()
        return sum(float(((end[k].float() - start[k].float()) ** 2).sum()) for k in start if k in end)

    assert drift(10.0) < 0.5 * drift(0.0)


def test_stage2_mse_falls_and_projection_is_saved(tiny_bert, tmp_path, faq_pairs):
    teacher = _tiny(tmp_path / "teacher", "bert", hidden=64, seed=1)
    Tower.load(teacher, spec=TowerSpec(max_tokens=24)).save(tmp_path / "teacher-tower")
    student = _tiny(tmp_path / "student", "bert", hidden=32, seed=2)
    c = Stage2Config(student=str(student), steps=60, batch_size=32, lr=3e-3, warmup_steps=2, max_query_tokens=24)
    run = stage2.distill(c, tmp_path / "teacher-tower", faq_pairs)
    m = stage2.save(run, c, tmp_path / "teacher-tower", faq_pairs, tmp_path / "s2")
    assert m["projection"] == [32, 64]
    assert m["mse_last10_mean"] < 0.7 * m["mse_first10_mean"], m
    saved = tmp_path / "s2" / "student"
    assert (saved / PROJECTION_FILE).exists()
    texts = ["How do I read a file?", "What is a lambda?"]
    trained = run.student.encode(texts)  # the student as trained, still in memory
    reloaded = Tower.load(saved)
    assert reloaded.dim == 64
    np.testing.assert_allclose(reloaded.encode(texts), trained, atol=1e-6)


def test_length_window_batches_draw_every_text_alike_with_less_padding():
    """Window 1 draws exactly as stage 2 always did; a window of W batches draws rows alike (each
    about equally often, none twice in one window) and cuts them into batches of neighbouring
    lengths, so the padded tokens fall."""
    lengths = np.random.default_rng(5).integers(1, 40, 300)
    old, new = np.random.default_rng(0), stage2.batches(lengths, 32, 1, np.random.default_rng(0))
    for _ in range(20):
        np.testing.assert_array_equal(next(new), old.choice(300, size=32, replace=False))

    draws = stage2.batches(lengths, 32, 8, np.random.default_rng(0))
    counts = np.zeros(300, dtype=int)
    padded = {1: 0, 8: 0}
    for _ in range(800):
        rows = next(draws)
        assert len(rows) == 32 and len(set(rows)) == 32
        counts[rows] += 1
        padded[8] += lengths[rows].max() * 32
    assert counts.min() > 0.75 * counts.mean() and counts.max() < 1.25 * counts.mean(), (counts.min(), counts.max())
    draws = stage2.batches(lengths, 32, 8, np.random.default_rng(1))
    window = sorted((next(draws) for _ in range(8)), key=lambda r: lengths[r].min())
    assert len(set(np.concatenate(window))) == 8 * 32  # one window: no text twice
    for a, b in zip(window, window[1:]):
        assert lengths[a].max() <= lengths[b].min()  # cut from one sorted draw
    random_batches = stage2.batches(lengths, 32, 1, np.random.default_rng(0))
    padded[1] = sum(lengths[next(random_batches)].max() * 32 for _ in range(800))
    assert padded[8] < 0.7 * padded[1], padded


def test_stage2_with_a_length_window_pads_less_and_still_learns(tmp_path, faq_pairs):
    teacher = _tiny(tmp_path / "teacher", "bert", hidden=64, seed=1)
    Tower.load(teacher, spec=TowerSpec(max_tokens=24)).save(tmp_path / "teacher-tower")
    student = _tiny(tmp_path / "student", "bert", hidden=64, seed=2)
    c = Stage2Config(student=str(student), steps=40, batch_size=16, lr=3e-3, warmup_steps=2, max_query_tokens=24)
    plain = stage2.distill(c, tmp_path / "teacher-tower", faq_pairs).metrics
    windowed = stage2.distill(dataclasses.replace(c, length_window=4), tmp_path / "teacher-tower", faq_pairs).metrics
    assert windowed["padded_tokens_per_real_token"] < plain["padded_tokens_per_real_token"] - 0.1, (windowed, plain)
    assert windowed["padded_tokens_per_real_token"] >= 1.0
    assert windowed["mse_last10_mean"] < 0.7 * windowed["mse_first10_mean"], windowed


def test_matryoshka_distillation_makes_the_prefix_agree_with_the_teacher(tmp_path, faq_pairs):
    """Distilled on nested prefixes, the student's first 16 of 64 dimensions (renormalised) match
    the teacher's prefix better than a student distilled at full width only."""
    from training.losses import distill_loss, matryoshka, prefix

    a, b = torch.nn.functional.normalize(torch.randn(4, 8), dim=1), torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    assert torch.equal(matryoshka(distill_loss, a, b, [], 1.0, 1.0)[0], distill_loss(a, b, 1.0, 1.0)[0])
    both = (distill_loss(a, b, 1.0, 1.0)[0] + distill_loss(prefix(a, 4), prefix(b, 4), 1.0, 1.0)[0]) / 2
    assert torch.allclose(matryoshka(distill_loss, a, b, [4, 99], 1.0, 1.0)[0], both)
    teacher = _tiny(tmp_path / "teacher", "bert", hidden=64, seed=1)
    Tower.load(teacher, spec=TowerSpec(max_tokens=24)).save(tmp_path / "teacher-tower")
    texts = [json.loads(line)["query"] for line in faq_pairs.read_text().splitlines()][:64]
    student = _tiny(tmp_path / "student", "bert", hidden=64, seed=2)
    target = Tower.load(tmp_path / "teacher-tower").encode(texts)[:, :16]
    target /= np.linalg.norm(target, axis=1, keepdims=True)

    def prefix_cos(dims: list[int]) -> float:
        c = Stage2Config(student=str(student), steps=40, batch_size=32, lr=3e-3, warmup_steps=2, max_query_tokens=24,
                         matryoshka=dims)
        got = stage2.distill(c, tmp_path / "teacher-tower", faq_pairs).student.encode(texts)[:, :16]
        got /= np.linalg.norm(got, axis=1, keepdims=True)
        return float((got * target).sum(axis=1).mean())

    nested, plain = prefix_cos([16]), prefix_cos([])
    assert 1 - nested < 0.8 * (1 - plain), (nested, plain)


def test_stage2_writes_from_rank_0_only(tiny_bert, tmp_path, faq_pairs, monkeypatch):
    from training.common import Dist

    Tower.load(tiny_bert, spec=TowerSpec(max_tokens=16)).save(tmp_path / "teacher")
    monkeypatch.setattr(stage2, "setup_distributed", lambda: Dist(rank=1, world=2, device=torch.device("cpu")))
    c = Stage2Config(student="teacher", student_layers=1, steps=2, batch_size=4, max_query_tokens=16)
    m = stage2.train(c, tmp_path / "teacher", faq_pairs, tmp_path / "rank1")
    assert m["student_dim"] > 0 and not (tmp_path / "rank1").exists()
    monkeypatch.setattr(stage2, "setup_distributed", lambda: Dist(rank=0, world=2, device=torch.device("cpu")))
    stage2.train(c, tmp_path / "teacher", faq_pairs, tmp_path / "rank0")
    assert (tmp_path / "rank0" / "student" / "tower.json").exists() and (tmp_path / "rank0" / "run_card.json").exists()


def test_run_cards_name_the_commit_the_stage_started_with(tiny_bert, tmp_path, faq_pairs, monkeypatch):
    """A commit made while a stage trains must not be credited with it: the card names the commit the stage
    started from, and the one at its end beside it only when they differ."""
    import training.common as common

    Tower.load(tiny_bert, spec=TowerSpec(max_tokens=16)).save(tmp_path / "teacher")
    commits = iter(["aaa1111", "bbb2222-dirty", "ccc3333", "ccc3333"])
    monkeypatch.setattr(common, "git_commit", lambda: next(commits))
    stage1.train(Stage1Config(model=str(tiny_bert), steps=2, **_quick()), faq_pairs, tmp_path / "s1")
    card = json.loads((tmp_path / "s1" / "run_card.json").read_text())
    assert card["git"] == {"commit": "aaa1111", "dirty": False, "at_finish": "bbb2222-dirty"}
    c = Stage2Config(student="teacher", student_layers=1, steps=2, batch_size=4, max_query_tokens=16)
    stage2.train(c, tmp_path / "teacher", faq_pairs, tmp_path / "s2")
    card = json.loads((tmp_path / "s2" / "run_card.json").read_text())
    assert card["git"] == {"commit": "ccc3333", "dirty": False}


def test_eval_on_a_run_scores_it_without_overwriting_the_config_it_trained_with(tiny_bert, tmp_path, faq_pairs):
    run = tmp_path / "run"
    for folder in ("stage1/query", "stage1/doc", "stage2/student"):
        Tower.load(tiny_bert, spec=TowerSpec(max_tokens=16)).save(run / folder)
    trained = '{"trained": "with this"}\n'
    (run / "config.json").write_text(trained, encoding="utf-8")
    corpus = ARTIFACTS / "corpus" / "python-docs"  # built by the faq_pairs fixture
    recipe = tmp_path / "t.toml"
    recipe.write_text(f"""name = "t"
[data]
train = "{faq_pairs}"
[eval]
baseline = "{tiny_bert}"
latency = false
[[eval.sets]]
name = "faq-dev"
split = "dev"
corpus = "{corpus / 'corpus.jsonl'}"
queries = "{corpus / 'queries.jsonl'}"
""", encoding="utf-8")
    assert training_main(["eval", "--config", str(recipe), "--set", "eval.split='dev'", "--out", str(run)]) == 0
    assert (run / "config.json").read_text(encoding="utf-8") == trained
    scored = json.loads((run / "eval-dev" / "config.json").read_text(encoding="utf-8"))
    assert scored["eval"]["split"] == "dev" and scored["eval"]["baseline"] == str(tiny_bert)
    metrics = json.loads((run / "eval-dev" / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["sets"]["faq-dev"]["rows"]) == {evaluate.BASELINE, evaluate.STAGE1, evaluate.STUDENT}


def _zero_dropped(tower: Tower, kept: list[list[int]]) -> Tower:
    """The reference for a pruned tower: the full tower with the dropped neurons' outgoing weights zeroed."""
    from training.towers import _ffn_pairs

    for idx, (_, out) in zip(kept, _ffn_pairs(tower.model)):
        mask = torch.zeros(out.in_features)
        mask[idx] = 1
        out.weight.data *= mask
    return tower


@pytest.mark.parametrize("kind", ["bert", "qwen"])
def test_ffn_pruning_keeps_the_important_neurons_and_computes_what_the_full_model_does_without_the_rest(
        kind, tiny_bert, tiny_qwen, faq_pairs, tmp_path):
    """A pruned tower equals the full tower with the dropped neurons silenced (so the right rows and
    columns were cut, in both matrices), keeps a neuron made loud and drops a silenced one, and saves
    as a plain checkpoint of the narrower width that reloads to the same embeddings."""
    from training.towers import _ffn_pairs, prune_ffn

    folder = tiny_bert if kind == "bert" else tiny_qwen
    texts = [json.loads(line)["query"] for line in faq_pairs.read_text().splitlines()][:80]
    tower, reference = Tower.load(folder), Tower.load(folder)
    _, out0 = _ffn_pairs(tower.model)[0]
    out0.weight.data[:, 7] *= 1000.0  # neuron 7 of layer 0 carries 1000x the weight back: it must stay
    out0.weight.data[:, 3] = 0.0  # neuron 3 of layer 0 carries nothing: it must go
    _ffn_pairs(reference.model)[0][1].weight.data.copy_(out0.weight.data)
    kept = prune_ffn(tower, 40, texts)
    assert [len(k) for k in kept] == [40, 40] and 7 in kept[0] and 3 not in kept[0]
    assert all(out.in_features == 40 and all(lin.out_features == 40 for lin in ins) for ins, out in _ffn_pairs(tower.model))
    pruned = tower.encode(texts[:16])
    np.testing.assert_allclose(pruned, _zero_dropped(reference, kept).encode(texts[:16]), atol=2e-6)
    tower.save(tmp_path / "pruned")
    reloaded = Tower.load(tmp_path / "pruned")
    assert reloaded.model.config.intermediate_size == 40
    np.testing.assert_allclose(reloaded.encode(texts[:16]), pruned, atol=1e-6)
    with pytest.raises(TowerError, match=r"stage2.student_ffn must be in \[1, 40\] \(the model's feed-forward width\); got 41"):
        prune_ffn(reloaded, 41, texts, "stage2.student_ffn")


def test_stage2_prunes_the_student_it_distils_and_records_its_width(tiny_bert, faq_pairs, tmp_path):
    Tower.load(tiny_bert, spec=TowerSpec(max_tokens=16)).save(tmp_path / "teacher")
    c = Stage2Config(student="teacher", student_layers=1, student_ffn=32, prune_texts=64, steps=20, batch_size=16,
                     lr=3e-3, warmup_steps=1, max_query_tokens=16)
    m = stage2.train(c, tmp_path / "teacher", faq_pairs, tmp_path / "s2")
    assert m["student_ffn"] == 32 and m["mse_last10_mean"] < m["mse_first10_mean"], m
    full = stage2.train(dataclasses.replace(c, student_ffn=0, steps=1), tmp_path / "teacher", faq_pairs, tmp_path / "full")
    assert full["student_ffn"] == 128 and m["student_parameters"] == full["student_parameters"] - 96 * (64 + 64 + 1)
    assert Tower.load(tmp_path / "s2" / "student").model.config.intermediate_size == 32
    from training.sweep import student_shape

    card = json.loads((tmp_path / "s2" / "run_card.json").read_text())
    assert student_shape(card)["student_ffn"] == 32


def test_stage2_with_frozen_embeddings_trains_the_layer_and_keeps_every_token_embedding(tiny_bert, faq_pairs, tmp_path):
    Tower.load(tiny_bert, spec=TowerSpec(max_tokens=16)).save(tmp_path / "teacher")
    c = Stage2Config(student="teacher", student_layers=1, freeze_embeddings=True, steps=20, batch_size=16, lr=3e-3,
                     warmup_steps=1, max_query_tokens=16)
    m = stage2.train(c, tmp_path / "teacher", faq_pairs, tmp_path / "s2")
    start = Tower.load(tmp_path / "teacher", layers=1).model.state_dict()
    after = Tower.load(tmp_path / "s2" / "student").model.state_dict()
    words = next(k for k in start if k.endswith("word_embeddings.weight"))
    assert torch.equal(start[words], after[words])
    assert m["trained_parameters"] == m["student_parameters"] - start[words].numel()
    changed = [k for k in start if k != words and not torch.equal(start[k], after[k])]
    assert any("layer.0" in k for k in changed) and m["mse_last10_mean"] < m["mse_first10_mean"], (changed, m)
    thawed = stage2.train(dataclasses.replace(c, freeze_embeddings=False), tmp_path / "teacher", faq_pairs, tmp_path / "thawed")
    assert not torch.equal(start[words], Tower.load(tmp_path / "thawed" / "student").model.state_dict()[words])
    assert thawed["trained_parameters"] == thawed["student_parameters"]


def test_score_distillation_is_the_kl_of_the_two_rankings_and_teaches_the_teachers_ranking(tiny_bert, faq_pairs, tmp_path):
    """``score_distill`` is KL(softmax(teacher scores) || softmax(student scores)) over the pool; zero
    for the teacher itself. Distilled with it, a student ranks the doc tower's pool more like the
    teacher on texts it never saw than the same student distilled without it."""
    from training.losses import score_distill

    q_t, q_s, docs = (torch.nn.functional.normalize(torch.randn(n, 8), dim=1) for n in (5, 5, 7))
    p, log_p, log_q = (q_t @ docs.T / 0.1).softmax(1), (q_t @ docs.T / 0.1).log_softmax(1), (q_s @ docs.T / 0.1).log_softmax(1)
    assert torch.allclose(score_distill(q_s, q_t, docs, 0.1), (p * (log_p - log_q)).sum(1).mean(), atol=1e-6)
    assert float(score_distill(q_t, q_t, docs, 0.1)) < 1e-6 < float(score_distill(q_s, q_t, docs, 0.1))

    stage1_dir = tmp_path / "stage1"
    Tower.load(_tiny(tmp_path / "teacher", "bert", hidden=64, seed=1), spec=TowerSpec(max_tokens=24)).save(stage1_dir / "query")
    Tower.load(_tiny(tmp_path / "doc", "bert", hidden=64, seed=3), spec=TowerSpec(max_tokens=48)).save(stage1_dir / "doc")
    student = _tiny(tmp_path / "student", "bert", hidden=32, seed=2)
    texts = [json.loads(line)["query"] for line in faq_pairs.read_text().splitlines()]
    pairs = tmp_path / "pairs.jsonl"  # distil on the first 100 questions, judge on the other ones
    pairs.write_text("".join(faq_pairs.read_text().splitlines(keepends=True)[:100]), encoding="utf-8")
    held = texts[100:]
    c = Stage2Config(student=str(student), steps=60, batch_size=32, lr=3e-3, warmup_steps=2, max_query_tokens=24,
                     w_mse=0.0, rank_docs=64, rank_temperature=0.01)
    pool = stage2.rank_pool(dataclasses.replace(c, w_rank=1.0), stage1_dir / "query", pairs, None)
    assert pool.shape == (64, 64) and torch.allclose(pool.norm(dim=1), torch.ones(64), atol=1e-5)
    want = torch.from_numpy(Tower.load(stage1_dir / "query").encode(held))

    def held_out_kl(w_rank: float) -> tuple[float, dict]:
        run = stage2.distill(dataclasses.replace(c, w_rank=w_rank), stage1_dir / "query", pairs)
        got = torch.from_numpy(run.student.encode(held))
        return float(score_distill(got, want, pool, 0.01)), run.metrics

    ranked, m = held_out_kl(1.0)
    plain, _ = held_out_kl(0.0)
    assert m["rank_pool"] == 64 and m["rank_kl_last10_mean"] < 0.7 * m["rank_kl_first10_mean"], m
    assert ranked < 0.8 * plain, (ranked, plain)
    (tmp_path / "lonely").mkdir()
    shutil.copytree(stage1_dir / "query", tmp_path / "lonely" / "query")
    with pytest.raises(TowerError, match="stage2.w_rank = 1.0 needs the stage-1 doc tower"):
        stage2.distill(dataclasses.replace(c, w_rank=1.0), tmp_path / "lonely" / "query", pairs)
    # rank_pool = "queries": the pool is the teacher's own embeddings of distinct distillation texts; no doc tower needed
    texts_in, _ = stage2.distillation_queries(pairs, c.max_queries, c.seed)
    targets = torch.from_numpy(Tower.load(stage1_dir / "query").encode(texts_in))
    own = stage2.rank_pool(dataclasses.replace(c, w_rank=1.0, rank_pool="queries", rank_docs=50), tmp_path / "lonely" / "query",
                           pairs, None, targets)
    assert own.shape == (50, 64) and len({tuple(r) for r in own.tolist()}) == 50
    assert all(bool(((targets - r).abs().max(dim=1).values < 1e-7).any()) for r in own)


def _build_repository(root: Path, query_tower: Path, doc_tower: Path, documents: int) -> tuple[Path, list[dict]]:
    """build/ all on the first ``documents`` of the default corpus with these towers -> (artifacts, docs)."""
    from build.__main__ import main as build_main

    lines = (ARTIFACTS / "corpus" / "python-docs" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:documents]
    corpus = root / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    artifacts = root / "artifacts"
    assert build_main(["all", "--artifacts", str(artifacts), "--corpus", str(corpus), "--query-tower", str(query_tower),
                       "--doc-tower", str(doc_tower), "--max-k", "50"]) == 0
    return artifacts, [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def student_repository(tmp_path_factory, tiny_bert, faq_pairs, repository):
    """A distilled student (with a projection) and its stage-1 doc tower, built and rendered by build/."""
    root = tmp_path_factory.mktemp("student")
    s1 = Stage1Config(model=str(tiny_bert), steps=3, **_quick())
    stage1.train(s1, faq_pairs, root / "s1")
    narrow = _tiny(root / "narrow", "bert", hidden=32, seed=5)
    s2 = Stage2Config(student=str(narrow), steps=10, batch_size=32, lr=3e-3, warmup_steps=1, max_query_tokens=24)
    stage2.train(s2, root / "s1" / "query", faq_pairs, root / "s2")
    artifacts, _ = _build_repository(root, root / "s2" / "student", root / "s1" / "doc", documents=200)
    return artifacts / "model_repository", root / "s2" / "student"


def test_distilled_student_served_equals_in_process(student_repository, tmp_path):
    from clients.retrieval import RetrievalClient
    from tests.conftest import start_server

    repo, student = student_repository
    texts = ["How do I copy a file?", "Why are default values shared between objects?", "what is the GIL"]
    expected = Tower.load(student).encode(texts)
    assert expected.shape == (3, 64)
    server = start_server(repo, tmp_path / "server")
    try:
        with RetrievalClient(server.grpc_url) as client:
            served = client.embed(texts)
            hits = client.retrieve(texts, k=5)
    finally:
        server.stop()
    assert served.shape == (3, 64)
    cos = (served * expected).sum(axis=1)
    assert cos.min() > 0.9999, cos
    assert all(len(h) == 5 for h in hits.hits)


@pytest.fixture(scope="module")
def decoder_repository(tmp_path_factory, tiny_qwen, faq_pairs, repository):
    """Decoder-LLM towers (last token, EOS appended, instruction prefixes) built and rendered by build/."""
    root = tmp_path_factory.mktemp("decoder")
    s1 = Stage1Config(model=str(tiny_qwen), steps=3, query_prefix="query: ", doc_prefix="passage: ", **_quick())
    stage1.train(s1, faq_pairs, root / "s1")
    artifacts, docs = _build_repository(root, root / "s1" / "query", root / "s1" / "doc", documents=120)
    return artifacts, root / "s1", docs


def test_decoder_towers_with_prefix_and_eos_serve_what_they_compute(decoder_repository, tmp_path):
    from clients.retrieval import RetrievalClient
    from model_repository.runtime.index import load_index, read_manifest
    from tests.conftest import start_server

    artifacts, s1, docs = decoder_repository
    repo = artifacts / "model_repository"
    render = Rendered.read(repo).context
    assert render.prefix == "query: " and render.eos_id == "102" and render.pooling == "last_token"
    # The index holds what the doc tower computes in-process, prefix and EOS included.
    index_dir = repo / "mips_topk" / "1" / "index"
    index = load_index(index_dir, read_manifest(index_dir)["query_tower_fingerprint"])
    from training.data import document_text

    expected_docs = Tower.load(s1 / "doc").encode([document_text(d) for d in docs])
    np.testing.assert_allclose(index.embeddings, expected_docs, atol=2e-3)  # stored as fp16
    texts = ["How do I copy a file?", "Why are default values shared between objects?"]
    expected = Tower.load(s1 / "query").encode(texts)
    server = start_server(repo, tmp_path / "server")
    try:
        with RetrievalClient(server.grpc_url) as client:
            served = client.embed(texts)
    finally:
        server.stop()
    assert (served * expected).sum(axis=1).min() > 0.9999


def test_build_refuses_a_tower_without_its_eos_id(tiny_qwen, tmp_path):
    from training.tower_format import TowerFormatError, read_spec

    Tower.load(tiny_qwen, spec=TowerSpec(max_tokens=16)).save(tmp_path / "decoder")
    spec = json.loads((tmp_path / "decoder" / "tower.json").read_text())
    assert spec["append_eos"] is True and spec["eos_id"] == 102
    (tmp_path / "decoder" / "tower.json").write_text(json.dumps({**spec, "eos_id": None}))
    with pytest.raises(TowerFormatError, match=r"field 'append_eos' is set but 'eos_id' is missing"):
        read_spec(tmp_path / "decoder", for_serving=True)


def test_metrics_match_hand_computed_values():
    docs = np.eye(4, dtype=np.float32)
    queries = np.array([[0.9, 0.1, 0, 0], [0, 0, 0.2, 0.8], [0.1, 0.2, 0.3, 0.9]], dtype=np.float32)
    qs = [{"id": "a", "relevance": {"d0": 2}}, {"id": "b", "relevance": {"d2": 1}}, {"id": "c", "relevance": {"d2": 1, "d1": 1}}]
    m = retrieval_metrics(queries, docs, ["d0", "d1", "d2", "d3"], qs)
    # a: d0 first. b: d3, d2 -> rank 2. c: d3, d2, d1 -> ranks 2 and 3 of 2 relevant.
    assert m["R@1"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["MRR@10"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3, abs=1e-4)
    ndcg_c = (1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert m["nDCG@10"] == pytest.approx((1 + 1 / np.log2(3) + ndcg_c) / 3, abs=1e-4)
    assert m["R@10"] == pytest.approx(1.0)


def test_debian_descriptions_group_by_source_package():
    from training.debian import parse_descriptions, split_of

    translation = (
        "Package: foo\nDescription-md5: 1\nDescription-en: frobnicate files quickly\n Foo frobnicates files with great care and "
        "speed for everyone who needs it.\n .\n It is fast.\n\n"
        "Package: foo-doc\nDescription-md5: 2\nDescription-en: frobnicate files quickly (documentation)\n Foo frobnicates files "
        "with great care and speed for everyone who needs it.\n\n"
        "Package: bar\nDescription-md5: 3\nDescription-en: transitional package\n This is a transitional package, it can safely "
        "be removed once nothing depends on it any more.\n"
    )
    packages = "Package: foo-doc\nSource: foo (1.0-1)\nVersion: 1.0-1\n\nPackage: foo\nVersion: 1.0-1\n"
    rows = parse_descriptions(translation, packages)
    assert [(r["package"], r["source"]) for r in rows] == [("foo", "foo"), ("foo-doc", "foo")]
    assert rows[0]["long"].split("\n") == ["Foo frobnicates files with great care and speed for everyone who needs it.", "It is fast."]
    assert split_of("foo") == split_of("foo") and {split_of(f"p{i}") for i in range(400)} == {"train", "dev", "test"}


@pytest.mark.parametrize("content,message", [
    ("", r"no pairs; a training file needs at least one line"),
    ('{"query": "q"}\n', r"pairs.jsonl:1: field 'positive' must be a non-empty str; got None"),
    ('{"query": "q", "positive": "p", "negatives": "n"}\n', r"pairs.jsonl:1: field 'negatives' must be a list of non-empty strings"),
])
def test_bad_training_data_names_the_field(tmp_path, content, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_pairs(path)


def test_bad_eval_queries_name_the_missing_document(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"query": "q", "positive": "nope"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"q.jsonl:1: field 'relevance' names doc ids not in the corpus: \['nope'\]"):
        read_eval_queries(path, {"d0"})


@pytest.mark.parametrize("override,message", [
    ("stage1.lrr=1", r"stage1.lrr: unknown field"),
    ("stage1.lr='fast'", r"stage1.lr must be float; got 'fast'"),
    ("stage1.batch_size=0", r"stage1.batch_size must be >= 1; got 0"),
    ("stage2.projection='maybe'", r"stage2.projection must be 'auto' or 'none'; got 'maybe'"),
    ("stage2.student_ffn=-1", r"stage2.student_ffn must be >= 0 \(0 keeps every feed-forward neuron\); got -1"),
    ("stage2.rank_pool='corpus'", r"stage2.rank_pool must be 'docs' or 'queries'; got 'corpus'"),
    ("stage2.w_rank=-1.0", r"stage2.w_rank must be >= 0 and stage2.rank_temperature > 0; got -1.0, 0.05"),
    ("stage2.rank_docs=0", r"stage2.rank_docs must be >= 1; got 0"),
    ("stage2.length_window=0", r"stage2.length_window must be >= 1; got 0"),
    ("stage1.length_window=0", r"stage1.length_window must be >= 1; got 0"),
])
def test_bad_config_names_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        tconfig.load("cpu-small", [override])


def test_bad_model_path_and_dimension_mismatch(tiny_bert, tmp_path, faq_pairs):
    with pytest.raises(TowerError, match=r"stage1.model: model path '/nonexistent/llm' does not exist"):
        stage1.load_towers(Stage1Config(model="/nonexistent/llm"))
    teacher = Tower.load(tiny_bert)
    narrow = _tiny(tmp_path / "narrow", "bert", hidden=32)
    with pytest.raises(TowerError, match=r"stage2.projection is 'none' but the student's dimension 32 differs from the teacher's 64"):
        stage2.load_student(Stage2Config(student=str(narrow), projection="none"), teacher)


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert training_main(["stage1", "--set", f"data.train='{empty}'", "--set", "data.build=''", "--out", str(tmp_path)]) == 2
    assert "no pairs; a training file needs at least one line" in capsys.readouterr().err
    assert training_main(["stage1", "--config", "no-such-recipe"]) == 2
    assert "recipes: ['cpu-small', 'gpu-smollm2']" in capsys.readouterr().err


def test_smollm2_conversion_refuses_a_different_file(tmp_path):
    from training.smollm2 import ConversionError, convert

    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(ConversionError, match=r"sha256 must be b179c952.* refusing to convert a different file"):
        convert(tmp_path / "out", fake)
    assert not (tmp_path / "out").exists()


def test_latency_rounds_interleave_the_towers_and_report_the_median(tiny_bert, tmp_path, monkeypatch):
    from training.config import EvalSet

    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": f"document {i}"}) + "\n" for i in range(3)))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"query": f"query {i}", "positive": f"d{i}"}) + "\n" for i in range(3)))
    sample = EvalSet("s", str(tmp_path / "c.jsonl"), str(tmp_path / "q.jsonl"), "dev")
    rows = [evaluate.Row("a", "A", "A"), evaluate.Row("b", "B", "B")]
    real = evaluate.measure_latency(rows[:1], sample, 2, lambda path, role: Tower.load(tiny_bert, role), rounds=1)["a"]
    assert real["batch1_median_ms"] > 0 and real["batch64_ms_per_query"] > 0 and real["queries"] == 2
    calls, figures = [], iter([5.0, 1.0, 9.0, 2.0, 7.0, 3.0])  # a, b, a, b, a, b

    def fake(tower, texts):
        calls.append(tower)
        x = next(figures)
        return {"batch1_median_ms": x, "batch64_ms_per_query": x / 10, "parameters": 1, "threads": 1}

    monkeypatch.setattr(evaluate, "query_latency", fake)
    got = evaluate.measure_latency(rows, sample, 3, lambda path, role: path, rounds=3)
    assert calls == ["A", "B"] * 3  # interleaved, each tower loaded once
    assert got["a"]["batch1_median_ms"] == 7.0 and got["a"]["batch1_median_rounds_ms"] == [5.0, 9.0, 7.0]
    assert got["b"]["batch64_ms_per_query"] == pytest.approx(0.2) and got["b"]["queries"] == 3
    assert evaluate.ratios({"sets": {}, "latency": {evaluate.STAGE1: got["a"], evaluate.STUDENT: got["b"]}})["speedup_batch1"] == 3.5
