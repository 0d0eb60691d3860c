"""A few stage-2 steps on fixed batches; writes the student's weights and the run's metrics (rank 0).

Run as ``python ddp_stage2.py TEACHER PAIRS OUT GLOBAL_BATCH`` (one process) or under
``torchrun --nproc-per-node 2`` (gloo): the two must end with the same student, each of the two
having computed half of every batch. ``NO_DDP=1`` leaves the gradients unaveraged, so the test can
show that it detects ranks that each step on their own half.
"""
import os
import sys
from pathlib import Path

import torch.distributed as dist

from training import common, stage2
from training.config import Stage2Config

if os.environ.get("NO_DDP") == "1":
    stage2.wrap_ddp = lambda module, ctx: module

teacher, pairs, out, global_batch = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
world = int(os.environ.get("WORLD_SIZE", "1"))
c = Stage2Config(student="teacher", student_layers=1, steps=4, batch_size=global_batch // world, lr=3e-3, warmup_steps=1,
                 max_query_tokens=16, length_window=2, w_rank=0.5, rank_pool="queries", rank_docs=32)
run = stage2.distill(c, teacher, pairs)
if common.setup_distributed().rank == 0:
    import torch

    torch.save({"weights": {k: v.detach().cpu() for k, v in run.student.state_dict().items()}, "metrics": run.metrics}, out)
if dist.is_initialized():
    dist.barrier()  # rank 0 has written: no rank tears its gloo threads down under the other
    dist.destroy_process_group()
