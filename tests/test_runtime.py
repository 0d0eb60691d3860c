"""Serving-side library without a server: validation, tokenization, ragged batching, index loading."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from model_repository.runtime import InvalidInput
from model_repository.runtime.encoder import concat_padded
from model_repository.runtime.index import IndexMismatch, load_index, snippet
from model_repository.runtime.params import ModelParams
from model_repository.runtime.text import decode_texts


@pytest.mark.parametrize(
    "raw,message",
    [
        ([b""], r"TEXT\[0\] must be non-empty text; got ''"),
        ([b"ok", b"  \n\t"], r"TEXT\[1\] must be non-empty text; got '  \\n\\t'"),
        ([b"x" * 11], r"TEXT\[0\] exceeds 10 characters; got 11"),
        ([b"caf\xe9"], r"TEXT\[0\] must be UTF-8; byte 0xe9 at offset 3 is not valid"),
    ],
)
def test_decode_texts_rejects_with_field_limit_and_value(raw, message):
    with pytest.raises(InvalidInput, match=message):
        decode_texts(raw, max_chars=10)


def test_decode_texts_counts_characters_not_bytes():
    assert decode_texts(["é" * 10], max_chars=10) == ["é" * 10]


def test_tokenizer_truncates_to_max_tokens(pipeline):
    tok = pipeline.tokenizer
    ids, mask = tok(["word " * 2000, "short text"])
    assert ids.shape == (2, tok.max_tokens)
    assert mask[0].sum() == tok.max_tokens and 2 < mask[1].sum() < 10
    # [CLS] ... [SEP] survive truncation.
    assert ids[0, 0] == ids[1, 0] and ids[0, -1] == ids[1, mask[1].sum() - 1]


def test_concat_padded_keeps_rows_and_pads_at_the_end():
    a = np.array([[1, 2, 3]])
    b = np.array([[4], [5]])
    np.testing.assert_array_equal(concat_padded([a, b]), [[1, 2, 3], [4, 0, 0], [5, 0, 0]])


def test_ragged_encoding_equals_each_request_alone(pipeline, queries):
    tok, enc = pipeline.tokenizer, pipeline.encoder
    requests = [tok(queries[0:1]), tok(queries[1:4]), tok(["a much longer query " * 12])]
    together = enc.encode_ragged(requests)
    for (ids, mask), hidden in zip(requests, together):
        alone = enc(ids, mask)
        assert hidden.shape == alone.shape
        np.testing.assert_allclose(hidden, alone, atol=2e-5, rtol=0)


def test_model_params_read_typed_values_and_name_missing_keys():
    params = ModelParams(json.dumps({"name": "m", "parameters": {"n": {"string_value": "7"}, "s": {"string_value": "x"}}}))
    assert params.int("n") == 7 and params.str("s") == "x"
    with pytest.raises(KeyError, match="model 'm': config.pbtxt has no parameter 'missing'"):
        params.str("missing")
    with pytest.raises(ValueError, match="parameter 's' must be an integer; got 'x'"):
        params.int("s")


def test_snippet_cuts_at_a_word():
    assert snippet("one two   three", 50) == "one two three"
    assert snippet("alpha beta gamma delta", 12) == "alpha beta …"


def test_snippet_from_the_head_equals_the_snippet_of_the_whole_text():
    """snippet collapses only a head of the text; over texts of runs of words and whitespace of every
    length (whitespace-only heads, cuts inside words and inside whitespace) it equals the whole collapse."""
    def whole(text: str, max_chars: int) -> str:  # the definition: collapse everything, then cut
        text = " ".join(text.split())
        return text if len(text) <= max_chars else text[:max_chars].rsplit(" ", 1)[0] + " …"

    rng = np.random.default_rng(7)
    for _ in range(3000):
        parts = [("x" * int(rng.integers(1, 30))) if rng.random() < 0.6 else " \n\t"[int(rng.integers(0, 3))] * int(rng.integers(1, 90))
                 for _ in range(int(rng.integers(0, 40)))]
        text, max_chars = "".join(parts), int(rng.integers(1, 80))
        assert snippet(text, max_chars) == whole(text, max_chars), (text, max_chars)


@pytest.fixture()
def index_copy(repository, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(repository / "mips_topk" / "1" / "index", folder)
    return folder


def test_index_loads_and_matches_manifest(index_copy, render_info):
    index = load_index(index_copy, render_info.query_tower["fingerprint"])
    assert len(index) == index.manifest["count"] == len(index.keys)
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=2e-3)  # fp16 storage


def test_index_of_another_query_tower_is_refused(index_copy):
    with pytest.raises(IndexMismatch, match="index pairs with query tower .* but this deployment's query tower is 0000"):
        load_index(index_copy, "0000")


def test_tampered_index_is_refused(index_copy, render_info):
    shard = next(index_copy.glob("shard-*.npy"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexMismatch, match=rf"{shard.name}: sha256 must be [0-9a-f]{{64}}; got [0-9a-f]{{64}}"):
        load_index(index_copy, render_info.query_tower["fingerprint"])


def test_atomic_folder_replaces_whole_or_leaves_the_old_one(tmp_path):
    from model_repository.runtime.files import atomic_folder

    out = tmp_path / "artifact"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_folder(out) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("failed half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"] and (out / "old.txt").read_text() == "old"
    with atomic_folder(out) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()  # nothing is visible under the final name before the end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"] and [p.name for p in out.iterdir()] == ["new.txt"]


def test_every_served_model_py_stays_a_thin_adapter():
    from tests.conftest import ROOT

    sizes = {p.parent.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (ROOT / "model_repository" / "models").glob("*/model.py")}
    assert len(sizes) >= 5 and max(sizes.values()) < 120, sizes


def test_shard_rows_gather_across_shards_in_any_order():
    from model_repository.runtime.index import ShardRows

    full = np.random.default_rng(0).standard_normal((23, 5)).astype(np.float16)
    rows = ShardRows([full[:7], full[7:8], full[8:]])
    assert rows.shape == (23, 5) and len(rows) == 23
    ids = np.array([[22, 0, 7], [8, 6, 7]])
    np.testing.assert_array_equal(rows[ids], full[ids])
    np.testing.assert_array_equal(rows.float16(), full)


def test_gpu_repositories_get_a_cuda_pool_sized_for_their_batches(render_info, tmp_path):
    """Triton's 64 MiB default sends last_hidden_state through pinned host memory at 128 x 256 x 384."""
    from model_repository.launcher import MIB, ServerConfig, TritonServer, cuda_pool_bytes

    assert cuda_pool_bytes(128, 256, 384) == 256 * MIB  # 4 batches of 128 x 256 x 384 fp32 states + ids and masks
    assert cuda_pool_bytes(128, 256, 768) == 448 * MIB and cuda_pool_bytes(1, 8, 8) == 64 * MIB
    context = dataclasses.replace(render_info.context, target="gpu", max_batch_size=128, max_tokens=256, dim=768, shard_count=2)
    dataclasses.replace(render_info, context=context).write(tmp_path)
    flags = TritonServer(ServerConfig(tmp_path, tmp_path)).command(tmp_path)
    assert [f for f in flags if f.startswith("--cuda-memory-pool")] == [
        f"--cuda-memory-pool-byte-size=0:{448 * MIB}", f"--cuda-memory-pool-byte-size=1:{448 * MIB}"]
    dataclasses.replace(render_info, context=dataclasses.replace(context, target="cpu")).write(tmp_path)
    assert not [f for f in TritonServer(ServerConfig(tmp_path, tmp_path)).command(tmp_path) if "cuda-memory-pool" in f]


def test_saved_figures_are_palette_pngs_that_look_the_same_at_a_fraction_of_the_bytes(tmp_path):
    import io

    from PIL import Image

    from model_repository.runtime.provenance import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.linspace(0, 10, 200)
    for i in range(4):
        ax.plot(x, np.sin(x + i), label=f"system {i}")
    ax.fill_between(x, -0.5, 0.5, alpha=0.2)
    ax.legend()
    full = io.BytesIO()
    fig.savefig(full, format="png", dpi=110)
    path = save_figure(fig, tmp_path / "plot.png", dpi=110)
    plt.close(fig)
    saved = Image.open(path)
    assert saved.mode == "P" and not (tmp_path / ".plot.png.tmp").exists()
    want = np.asarray(Image.open(io.BytesIO(full.getvalue())).convert("RGB"), dtype=int)
    got = np.asarray(saved.convert("RGB"), dtype=int)
    assert got.shape == want.shape
    diff = np.abs(got - want).max(axis=2)
    assert (diff > 24).mean() < 0.01 and diff.mean() < 1.0, (diff.mean(), (diff > 24).mean())
    assert path.stat().st_size < 0.6 * len(full.getvalue())


def test_render_json_is_one_typed_value_written_and_read_whole(render_info, repository, tmp_path):
    """build writes render.json through Rendered and every reader reads it back the same; a file from another
    version of build (a setting it no longer has, one it lacks) is refused by name, not half-read."""
    from model_repository.runtime.rendered import Rendered

    assert (repository / "render.json").read_text(encoding="utf-8") == render_info.to_json()
    render_info.write(tmp_path)
    assert Rendered.read(tmp_path) == render_info
    raw = json.loads(render_info.to_json())
    raw["context"]["encoder_nice"] = 19
    del raw["context"]["dim"]
    (tmp_path / "render.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"unknown settings \['encoder_nice'\], missing \['dim'\].*render the repository again"):
        Rendered.read(tmp_path)
    assert Rendered.read_if_rendered(tmp_path / "nothing") is None
    with pytest.raises(FileNotFoundError, match="render.json is missing"):
        Rendered.read(tmp_path / "nothing")
