"""What can be checked here of the GPU target, TensorRT, Kubernetes and sharding.

TensorRT cannot be installed on this machine, so the engine build must refuse with
instructions; the GPU configs must parse as Triton's ModelConfig protobuf; engine
profiles must cover what Triton will send; manifests must parse and probe readiness;
a sharded search merged must equal the whole-index search, ties included.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from build.k8s import ClusterSettings, render_manifests
from build.render import ServingSettings, parse_model_config, render_configs, render_context
from build.shards import split_index
from build.tensorrt import EngineConfig, EngineConfigError, Profile, TensorRTUnavailable, build_engine, check_config
from kernels.topk import NumpyTopK, merge_topk, mips_topk_reference
from model_repository.launcher import DEFAULT_CUDA_POOL_BYTES, policy_flags, restriction_flags
from model_repository.supervisor import IMAGE_COMMAND, IMAGE_PATH
from model_repository.runtime.index import load_index
from tests.conftest import ARTIFACTS, ROOT


def _gpu_configs(render_info, **overrides) -> dict:
    from build.export import ExportedTower

    tower = ExportedTower(ARTIFACTS / "towers" / render_info.query_tower["fingerprint"])
    settings = ServingSettings(target="gpu", **overrides)
    return render_configs(render_context(tower, render_info.index, settings, encoder_bytes=123))


def test_gpu_target_configs_are_valid_model_configs(render_info):
    configs = _gpu_configs(render_info)
    enc = parse_model_config(configs["query_encoder"])
    assert enc.platform == "tensorrt_plan" and enc.default_model_filename == "model.plan" and not enc.backend
    assert list(enc.dynamic_batching.preferred_batch_size) == [8, 16, 32, 64]
    assert [g.kind for g in enc.instance_group] == [enc.instance_group[0].KIND_GPU]
    assert not any(i.allow_ragged_batch for i in enc.input)  # TensorRT takes padded batches
    for name, implementation in (("pool_normalize", "triton"), ("mips_topk", "cupy")):
        c = parse_model_config(configs[name])
        assert c.parameters["implementation"].string_value == implementation
        assert c.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
        assert c.instance_group[0].kind == c.instance_group[0].KIND_GPU
    tok = parse_model_config(configs["tokenizer"])
    assert tok.instance_group[0].kind == tok.instance_group[0].KIND_CPU
    assert tok.parameters["pad_to_multiple"].string_value == "16"
    # Rendering is deterministic.
    assert _gpu_configs(render_info) == configs


def test_gpu_target_with_the_torch_encoder_needs_no_engine(render_info):
    enc = parse_model_config(_gpu_configs(render_info, encoder_implementation="torch")["query_encoder"])
    assert enc.backend == "python" and enc.instance_group[0].kind == enc.instance_group[0].KIND_GPU
    params = {k: v.string_value for k, v in enc.parameters.items()}
    assert (params["implementation"], params["device"], params["dtype"], params["cuda_graphs"]) == ("torch", "cuda", "float16", "1")
    assert params["batch_buckets"] == "1,2,4,8,16,32,64,128" and params["seq_multiple"] == "16"
    with pytest.raises(ValueError, match=r"encoder_implementation must be one of \['onnx', 'torch', 'tensorrt'\]"):
        ServingSettings(encoder_implementation="tensorrt").resolved()  # no TensorRT on the cpu target
    with pytest.raises(ValueError, match=r"encoder_batch_buckets must be positive and reach max_batch_size 128"):
        ServingSettings(encoder_batch_buckets="1,2,64").resolved()


def test_cpu_target_is_unchanged_by_gpu_settings(render_info):
    from build.export import ExportedTower

    tower = ExportedTower(ARTIFACTS / "towers" / render_info.query_tower["fingerprint"])
    configs = render_configs(render_context(tower, render_info.index, ServingSettings(), encoder_bytes=1))
    enc = parse_model_config(configs["query_encoder"])
    assert enc.backend == "python" and not enc.HasField("dynamic_batching")  # sequential on the CPU
    assert "pool_normalize" not in configs and parse_model_config(configs["query_encoder"]).parameters["pooling"].string_value
    separate = render_configs(render_context(tower, render_info.index, ServingSettings(pooling_step="separate"), encoder_bytes=1))
    assert parse_model_config(separate["pool_normalize"]).parameters["implementation"].string_value == "numpy"
    assert "FORCE_CPU_ONLY_INPUT_TENSORS" not in parse_model_config(configs["mips_topk"]).parameters


def test_encoder_batching_resolves_per_target_and_queue_policy():
    assert ServingSettings().resolved()["encoder_batching"] == "sequential"
    assert ServingSettings(target="gpu").resolved()["encoder_batching"] == "dynamic"
    assert ServingSettings(max_queue_size=8).resolved()["encoder_batching"] == "dynamic"  # the batcher holds the queue
    assert ServingSettings(encoder_batching="dynamic").resolved()["encoder_batching"] == "dynamic"
    with pytest.raises(ValueError, match=r"needs the dynamic batcher on query_encoder.*got encoder_batching 'sequential'"):
        ServingSettings(encoder_batching="sequential", queue_timeout_us=1000).resolved()
    with pytest.raises(ValueError, match=r"encoder_batching must be one of \['dynamic', 'sequential'\]; got 'eager'"):
        ServingSettings(encoder_batching="eager").resolved()


def test_batch_window_is_zero_on_the_cpu_unless_asked(render_info):
    """A lone request must not wait for company on the CPU: the batcher merges only what queued."""
    assert [ServingSettings(target=t).resolved()["max_queue_delay_us"] for t in ("cpu", "gpu")] == [0, 500]
    assert ServingSettings(max_queue_delay_us=200).resolved()["max_queue_delay_us"] == 200
    with pytest.raises(ValueError, match=r"max_queue_delay_us must be >= 0, or -1 for auto; got -2"):
        ServingSettings(max_queue_delay_us=-2).resolved()
    from build.export import ExportedTower

    tower = ExportedTower(ARTIFACTS / "towers" / render_info.query_tower["fingerprint"])
    configs = render_configs(render_context(tower, render_info.index, ServingSettings(), encoder_bytes=1))
    for model in ("tokenizer", "ensemble_tokenizer", "mips_topk"):
        config = parse_model_config(configs[model])
        assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 0, model
    gpu = {m: parse_model_config(c) for m, c in _gpu_configs(render_info).items() if m in ("ensemble_tokenizer", "query_encoder")}
    assert {m: c.dynamic_batching.max_queue_delay_microseconds for m, c in gpu.items()} == {"ensemble_tokenizer": 500, "query_encoder": 500}


def test_admission_is_checked():
    # on by default on the CPU (measured there), off on the GPU (not measured); an explicit value wins
    auto = {t: ServingSettings(target=t).resolved() for t in ("cpu", "gpu")}
    assert {t: r["admission_budget_ms"] for t, r in auto.items()} == {"cpu": 1000, "gpu": 0}
    assert ServingSettings(admission_budget_ms=0).resolved()["admission_budget_ms"] == 0
    assert ServingSettings(admission_budget_ms=250, target="gpu").resolved()["admission_budget_ms"] == 250
    with pytest.raises(ValueError, match=r"admission_budget_ms must be >= 0 \(or -1 for auto\) and admission_ttl_s > 0; got -2 and 5.0"):
        ServingSettings(admission_budget_ms=-2).resolved()
    with pytest.raises(ValueError, match=r"topk_gemm must be one of \['auto', 'numpy'\]; got 'blas'"):
        ServingSettings(topk_gemm="blas").resolved()


def test_gpu_settings_are_checked(render_info):
    with pytest.raises(ValueError, match=r"preferred_batch_sizes must lie in \[1, 128\]; got '8,256'"):
        _gpu_configs(render_info, preferred_batch_sizes="8,256")
    with pytest.raises(ValueError, match=r"target must be one of \['cpu', 'gpu'\]; got 'tpu'"):
        ServingSettings(target="tpu").resolved()


def test_engine_build_refuses_without_tensorrt(tmp_path):
    with pytest.raises(TensorRTUnavailable, match=r"(?s)TensorRT is not installed here.*No engine was built.*tensorrt:24.10-py3"):
        build_engine(tmp_path / "model.onnx", tmp_path / "model.plan", EngineConfig(), max_batch_size=128, max_tokens=256)
    assert not (tmp_path / "model.plan").exists()


def test_build_cli_refuses_the_engine_step_clearly(capsys, repository):
    from build.__main__ import main

    assert main(["engine", "--artifacts", str(ARTIFACTS)]) == 2
    assert "TensorRT is not installed here" in capsys.readouterr().err


@pytest.mark.parametrize("profile,message", [
    (Profile(max_batch=64), r"max_batch must be >= the serving max_batch_size 128; got 64"),
    (Profile(max_seq=128), r"max_seq must be >= the tower's max_tokens 256; got 128"),
    (Profile(min_batch=4, opt_batch=2), r"need 1 <= min_batch <= opt_batch <= max_batch; got 4, 2, 128"),
])
def test_engine_profiles_must_cover_what_triton_sends(profile, message):
    with pytest.raises(EngineConfigError, match=message):
        check_config(EngineConfig(profiles=(profile,)), max_batch_size=128, max_tokens=256)
    check_config(EngineConfig(), max_batch_size=128, max_tokens=256)  # the defaults cover the defaults
    with pytest.raises(EngineConfigError, match=r"precision must be one of"):
        check_config(EngineConfig(precision="int4"), 128, 256)


def test_kubernetes_manifests_probe_readiness_and_request_gpus():
    docs = list(yaml.safe_load_all(render_manifests(ClusterSettings(replicas=4, gpus=2))))
    deployment, service = docs
    assert deployment["kind"] == "Deployment" and deployment["spec"]["replicas"] == 4
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    pools = {0: DEFAULT_CUDA_POOL_BYTES, 1: DEFAULT_CUDA_POOL_BYTES}  # one pool per GPU of the replica
    assert container["args"] == [*IMAGE_COMMAND, "tritonserver", "--model-repository=/models", *policy_flags(cuda_pools=pools),
                                 *restriction_flags("$(SN_ADMIN_KEY)")]  # model control needs the Secret's key
    assert container["env"] == [{"name": "SN_ADMIN_KEY", "valueFrom": {"secretKeyRef": {"name": "scalingnote-admin", "key": "admin-key"}}}]
    assert service["kind"] == "Service" and {p["port"] for p in service["spec"]["ports"]} == {8000, 8001, 8002}
    with pytest.raises(ValueError, match=r"replicas must be >= 1"):
        render_manifests(dataclasses.replace(ClusterSettings(), replicas=0))


def test_the_dockerfile_runs_tritonserver_with_the_launchers_flags():
    text = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    cmd = text[text.index("\nCMD ") + 5:].replace("\\\n", " ")
    expected = [*IMAGE_COMMAND, "tritonserver", "--model-repository=/models", *policy_flags(cuda_pools={0: DEFAULT_CUDA_POOL_BYTES})]
    assert json.loads(cmd[: cmd.index("]") + 1]) == expected
    assert f"COPY model_repository/supervisor.py {IMAGE_PATH}\n" in text


def test_gpu_image_can_compile_triton_kernels_and_runs_with_room_for_shared_memory():
    """Triton JIT needs a C compiler in the image; the python backend passes tensors through /dev/shm (64 MiB by default)."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    assert any(line.startswith("RUN ") and " gcc " in line for line in dockerfile.splitlines())
    docs = [(ROOT / "README.md").read_text(encoding="utf-8"), *(f.read_text(encoding="utf-8") for f in sorted((ROOT / "docs").glob("*.md")))]
    serving = [line for text in (dockerfile, *docs) for line in text.splitlines()
               if "docker run" in line and "nvcr.io/nvidia/tensorrt" not in line]  # the engine build needs no python backend
    assert len(serving) >= 2 and all("--shm-size=" in line for line in serving), serving


def test_sharded_search_merged_equals_the_whole_index(render_info, tmp_path, repository):
    index_dir = ARTIFACTS / "index" / render_info.index["index_version"]
    whole = load_index(index_dir, render_info.query_tower["fingerprint"])
    shards = split_index(index_dir, 3, tmp_path)
    rng = np.random.default_rng(0)
    queries = np.concatenate([whole.embeddings[[5, 1500, 3000]], rng.standard_normal((4, whole.embeddings.shape[1]))])
    queries = queries.astype(np.float32)
    for k in (1, 10, 200):
        parts = []
        for folder in shards:
            shard = load_index(folder, render_info.query_tower["fingerprint"])
            offset = shard.manifest["id_offset"]
            ids, scores = NumpyTopK(shard.embeddings).search(queries, min(k, len(shard)))
            parts.append((ids + offset, scores))
            assert shard.keys == whole.keys[offset : offset + len(shard)]
        ids, scores = merge_topk(parts, k)
        ref_ids, ref_scores = mips_topk_reference(queries, whole.embeddings, k)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=5e-6)  # GEMM blocking (and BLAS: MKL for 2+ queries) differ
    assert sum(json.loads((f / "manifest.json").read_text())["count"] for f in shards) == len(whole)


def test_merge_breaks_ties_across_shards_to_the_lower_id():
    # Shard 0 holds ids 0-2, shard 1 ids 3-5; every score ties.
    parts = [(np.array([[2, 0, 1]]), np.array([[1.0, 1.0, 1.0]])), (np.array([[3, 4, 5]]), np.array([[1.0, 1.0, 1.0]]))]
    ids, _ = merge_topk(parts, 4)
    assert ids.tolist() == [[0, 1, 2, 3]]


def _plain_and_int8(render_info, tmp_path, documents: int):
    """(query tower fingerprint, fp16 index, int8 index) of the corpus's first ``documents``, built by the doc tower."""
    from build.export import ExportedTower
    from build.index import build_index
    from training.corpus import read_corpus

    docs = read_corpus(ARTIFACTS / "corpus" / "python-docs" / "corpus.jsonl")[:documents]
    tower = ExportedTower(ARTIFACTS / "towers" / render_info.index["doc_tower_fingerprint"])
    fingerprint = render_info.query_tower["fingerprint"]
    name = f"first-{documents}"
    return (fingerprint, build_index(docs, name, tower, fingerprint, tmp_path / "index"),
            build_index(docs, name, tower, fingerprint, tmp_path / "index", compression="int8"))


def test_shards_of_a_compressed_index_load_and_search_exactly(render_info, tmp_path, repository):
    """Shards carry the fp16 vectors only; a compressed index's manifest must not promise them its codes."""
    fingerprint, plain, compressed = _plain_and_int8(render_info, tmp_path, 200)
    assert json.loads((compressed / "manifest.json").read_text())["compression"]["kind"] == "int8"
    shards = [load_index(f, fingerprint) for f in split_index(compressed, 2, tmp_path / "shards")]
    assert all(s.compressed is None for s in shards)
    whole = load_index(plain, fingerprint)
    np.testing.assert_array_equal(np.concatenate([s.embeddings for s in shards]), whole.embeddings)


def test_int8_calibration_batches_have_the_profiles_opt_shape(repository, render_info):
    """Calibrating at another shape than the profile optimises for skews the int8 scales."""
    from build.tensorrt import calibration_batches
    from model_repository.runtime.text import TextTokenizer

    tokenizer = TextTokenizer(repository / "tokenizer" / "1" / render_info.context.tokenizer_file, 256)
    texts = ["how do I copy a file"] * 5 + ["a much longer text about the python documentation " * 20] * 30
    profile = Profile(max_batch=128, opt_batch=8, max_seq=256, opt_seq=32)
    batches = calibration_batches(texts, tokenizer, profile, batches=3)
    assert len(batches) == 3
    for ids, mask in batches:
        assert ids.shape == mask.shape == (8, 32) and ids.dtype == mask.dtype == np.int64
    short_ids, short_mask = tokenizer(texts[:1])
    np.testing.assert_array_equal(batches[0][0][0, : short_ids.shape[1]], short_ids[0])  # padded, not changed
    assert batches[0][1][0].sum() == short_mask[0].sum()
    assert len(calibration_batches(texts, tokenizer, profile, batches=100)) == len(texts) // 8  # no partial batch
    with pytest.raises(EngineConfigError, match=r"at least opt_batch = 8 texts; got 7"):
        calibration_batches(texts[:7], tokenizer, profile, batches=1)


def test_compressed_index_keeps_only_its_codes_resident(render_info, tmp_path, repository):
    """int8 costs about half of fp16, not 1.5x: the fp16 vectors stay memory-mapped and only candidates are read."""
    from kernels.compressed import RescoringTopK
    from model_repository.runtime.index import resident_bytes

    fingerprint, plain, int8 = _plain_and_int8(render_info, tmp_path, 300)
    index = load_index(int8, fingerprint, mmap=True)
    assert all(isinstance(s, np.memmap) for s in index.rows.shards)
    manifest = json.loads((int8 / "manifest.json").read_text())
    n, d = manifest["count"], manifest["dim"]
    assert n == 300
    assert resident_bytes(manifest, "cupy") == n * (d + 4) and resident_bytes(manifest, "numpy") == n * (d + 4)
    plain_manifest = json.loads((plain / "manifest.json").read_text())
    assert resident_bytes(plain_manifest, "cupy") == n * d * 2 and resident_bytes(plain_manifest, "numpy") == n * d * 4
    c = index.compressed
    queries = load_index(plain, fingerprint).embeddings[[3, 77, 250]]
    mapped = RescoringTopK(index.rows, c["kind"], c["codes"], c["scales"], 50).search(queries, 10)
    in_memory = RescoringTopK(index.embeddings, c["kind"], c["codes"], c["scales"], 50).search(queries, 10)
    np.testing.assert_array_equal(mapped[0], in_memory[0])
    np.testing.assert_allclose(mapped[1], in_memory[1], rtol=0, atol=1e-6)
    assert mapped[0][:, 0].tolist() == [3, 77, 250]
    gathered = index.rows[np.array([[5, 299], [0, 150]])]
    np.testing.assert_array_equal(gathered.astype(np.float32), index.embeddings[[[5, 299], [0, 150]]])


def test_pooling_runs_in_the_cpu_encoder_unless_asked():
    """On the CPU the onnx encoder pools (one python hop fewer); pool_normalize stays a step of its
    own on the GPU (the Triton kernel), with the torch encoder, and when asked."""
    from build.render import ensembles

    assert ServingSettings().resolved()["pooling_step"] == "encoder"
    for settings in (ServingSettings(target="gpu"), ServingSettings(encoder_implementation="torch"),
                     ServingSettings(pool_implementation="triton"), ServingSettings(pooling_step="separate")):
        assert settings.resolved()["pooling_step"] == "separate", settings
    with pytest.raises(ValueError, match=r"pooling_step must be one of \['separate', 'encoder'\] \('encoder' needs the onnx "
                                         r"encoder and numpy pooling\); got 'encoder' with encoder 'torch' and pooling 'numpy'"):
        ServingSettings(pooling_step="encoder", encoder_implementation="torch").resolved()
    with pytest.raises(ValueError, match=r"got 'inline'"):
        ServingSettings(pooling_step="inline").resolved()
    steps = {p: {e["name"]: [s["model"] for s in e["steps"]] for e in ensembles(384, 0, p)} for p in ("encoder", "separate")}
    tok = "ensemble_tokenizer"
    assert steps["encoder"] == {"embed": [tok, "query_encoder"], "retrieve": [tok, "query_encoder", "mips_topk"]}
    assert steps["separate"] == {"embed": [tok, "query_encoder", "pool_normalize"],
                                 "retrieve": [tok, "query_encoder", "pool_normalize", "mips_topk"]}


def test_every_serving_setting_parses_to_its_own_type():
    """--admission-ttl-s was parsed as a Path (only int and str were mapped), so it could never be set."""
    import argparse

    from build import config as cfg

    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    _, settings = cfg.from_args(parser.parse_args(["--admission-ttl-s", "2.5", "--admission-budget-ms", "400", "--pooling-step", "separate"]))
    assert (settings.admission_ttl_s, settings.admission_budget_ms, settings.pooling_step) == (2.5, 400, "separate")
    assert settings.resolved()["admission_ttl_s"] == 2.5
    for action in parser._actions:  # every option of a typed field converts to that type
        field = {f.name: f for f in dataclasses.fields(ServingSettings)}.get(action.dest)
        if field is not None:
            assert action.type.__name__ == field.type, (action.dest, action.type, field.type)


def test_int8_encoder_is_opt_in_and_cpu_only():
    assert ServingSettings().resolved()["encoder_quantization"] == "none"
    assert ServingSettings(encoder_quantization="int8").resolved()["encoder_quantization"] == "int8"
    with pytest.raises(ValueError, match=r"encoder_quantization must be 'none' or 'int8' \(int8 with the onnx encoder only\); "
                                         r"got 'int8' with encoder 'tensorrt'"):
        ServingSettings(encoder_quantization="int8", target="gpu").resolved()
    with pytest.raises(ValueError, match=r"got 'int4' with encoder 'onnx'"):
        ServingSettings(encoder_quantization="int4").resolved()


def test_an_int8_graph_that_strays_is_refused_and_leaves_nothing(render_info, tmp_path, monkeypatch):
    from build import quantize
    from build.export import ExportedTower

    source = ARTIFACTS / "towers" / render_info.query_tower["fingerprint"]
    for name in ("model.onnx", "tokenizer.json", "export.json"):
        (tmp_path / name).symlink_to(source / name)
    monkeypatch.setattr(quantize, "MIN_COSINE", 0.99999)  # no int8 graph is that close
    with pytest.raises(quantize.QuantizationError, match=r"int8 encoder vs float: min cosine must be >= 0.99999; got 0\.9"):
        quantize.quantized_onnx(ExportedTower(tmp_path), ["how do I copy a file in python", "x", "what is a decorator"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "model.onnx", "tokenizer.json"]
