"""One stage-1 step on a fixed global batch; writes the loss and every gradient (rank 0).

Run as ``python ddp_step.py MODEL PAIRS OUT GLOBAL_BATCH`` (one process) or under
``torchrun --nproc-per-node 2`` (gloo): the two must agree. ``LOCAL_NEGATIVES=1``
turns the gather off (each rank's queries see only its own documents), so the test
can show that it detects negatives that do not span the devices.
"""
import os
import sys

import torch
import torch.distributed as dist

from training import losses, stage1
from training.common import setup_distributed
from training.config import Stage1Config
from training.data import read_pairs

if os.environ.get("LOCAL_NEGATIVES") == "1":
    losses.gather_with_grad = lambda x: x

model, pairs_file, out, global_batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = setup_distributed()
torch.manual_seed(0)
c = Stage1Config(model=model, batch_size=global_batch // ctx.world, max_doc_tokens=48, temperature=0.05)
pairs = read_pairs(pairs_file)
towers = stage1.load_towers(c).to(ctx.device)  # the GPU where the process has one
model_ = stage1.wrap_ddp(towers, ctx)
rows = stage1.local_rows(list(range(global_batch)), ctx)
loss = stage1.compute_loss(model_, towers, pairs, rows, None, c, ctx)
(loss * losses.world_size()).backward()
if ctx.rank == 0:
    grads = {n: p.grad.detach().cpu() for n, p in towers.named_parameters() if p.grad is not None}
    torch.save({"loss": float(loss), "grads": grads, "world": ctx.world}, out)
if dist.is_initialized():
    dist.barrier()  # rank 0 has written: no rank tears its gloo threads down under the other
    dist.destroy_process_group()
