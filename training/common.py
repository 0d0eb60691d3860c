"""What both stages share: the process group, the LR schedule, loss curves and run cards."""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.distributed as dist

from model_repository.runtime.files import sha256_file
from model_repository.runtime.provenance import git_commit, pyplot, save_figure

@dataclasses.dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def placement(cuda_devices: int, local_world: int, local_rank: int) -> tuple[str, str]:
    """(process-group backend, device) for one of ``local_world`` processes on a node with ``cuda_devices`` GPUs.

    NCCL needs a GPU of its own per rank: ranks that would share one (two ranks on a
    one-GPU machine) run on the CPU with gloo, whose all_gather takes CPU tensors only.
    """
    if cuda_devices >= local_world and cuda_devices > 0:
        return "nccl", f"cuda:{local_rank}"
    return "gloo", "cpu" if local_world > 1 or cuda_devices == 0 else "cuda:0"


def setup_distributed() -> Dist:
    """One process, or one of ``torchrun``'s: NCCL with a GPU per rank, else gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    backend, device = placement(torch.cuda.device_count(), local_world, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Dist(rank, world, device)


def wrap_ddp(module: torch.nn.Module, ctx: "Dist") -> torch.nn.Module:
    """DDP over a module (stage 1: both towers; stage 2: the student). ``find_unused_parameters``: an AutoModel may own parameters the
    loss never reaches (BERT's pooler); without it DDP silently skips reducing their
    bucket and ranks keep unaveraged gradients (the 2-process test caught this)."""
    if ctx.world == 1 or not dist.is_initialized():
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def local_rows(global_batch: list[int], ctx: "Dist") -> list[int]:
    """This rank's equal share of a batch drawn alike on every rank."""
    per = len(global_batch) // ctx.world
    return global_batch[ctx.rank * per : (ctx.rank + 1) * per]


def lr_lambda(warmup: int, total: int):
    """Linear warm-up to the peak, then linear decay to 10% of it."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.1, 1 - 0.9 * (step - warmup) / max(1, total - warmup))
    return f


def plot_curves(path: Path, title: str, curves: dict[str, list[float]]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items()):
        ax.plot(range(1, len(values) + 1), values, lw=1)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


@dataclasses.dataclass(frozen=True)
class Started:
    """When a stage began, and the commit of the code it began with: that code is what ran, whatever the
    tree holds when the stage ends (a commit made during a long run must not be credited with it)."""

    monotonic: float
    commit: str


def started_now() -> Started:
    return Started(time.monotonic(), git_commit())


def write_run_card(folder: Path, stage: str, config, metrics: dict, inputs: dict[str, Path], started: Started, extra: dict | None = None) -> Path:
    """run_card.json next to the checkpoint: config, metrics, input checksums, commit (at the start), machine."""
    import transformers

    commit, at_finish = started.commit, git_commit()
    card = {
        "stage": stage,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - started.monotonic, 1),
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
        "metrics": metrics,
        "inputs": {name: {"path": str(p), "sha256": sha256_file(Path(p))} for name, p in inputs.items() if Path(p).is_file()},
        "git": {"commit": commit.removesuffix("-dirty"), "dirty": commit.endswith("-dirty")}
               | ({"at_finish": at_finish} if at_finish != commit else {}),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "processes": dist.get_world_size() if dist.is_initialized() else 1},
        **(extra or {}),
    }
    path = folder / "run_card.json"
    path.write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")
    return path
