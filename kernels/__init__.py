"""Leaf package: pooling + L2 normalisation and top-k MIPS, each with a CPU reference.

Nothing here imports from the other folders of the repository. The rendered model
repository copies this package next to the python-backend models that use it.
"""
from kernels.pooling import Pooling, pool_normalize_reference
from kernels.topk import TopK, mips_topk_reference

__all__ = ["Pooling", "pool_normalize_reference", "TopK", "mips_topk_reference"]
