"""pool_normalize: last_hidden_state, attention_mask -> L2-normalised embedding.

An ``embed`` request gives back its admission ticket here once pooled (``admission_ticket``, from
the tokenizer; see runtime.admission); a ``retrieve`` request keeps it until its search has answered.

The implementation is chosen explicitly by the config parameter ``implementation``
and logged at load; nothing falls back silently:

- ``numpy``: the reference, on the CPU;
- ``triton``: the fused OpenAI-Triton kernel on the GPU. Inputs arrive by DLPack
  where Triton put them (``FORCE_CPU_ONLY_INPUT_TENSORS=no``): on this instance's GPU
  they stay there, and host inputs (Triton's CUDA pool was full) are copied over once
  (``runtime.placement``). The embedding leaves by DLPack. Loading it without a CUDA
  device fails.
"""
import numpy as np
import triton_python_backend_utils as pb_utils

from kernels.pooling import Pooling, pool_normalize_reference
from runtime import InvalidInput
from runtime.adapter import TicketReturn, execute_batched, input_array, input_tensor
from runtime.params import ModelParams
from runtime.placement import Placement

IMPLEMENTATIONS = ("numpy", "triton")


class TritonPythonModel:
    def initialize(self, args):
        params = ModelParams(args["model_config"])
        self.input_names = [i["name"] for i in params.config["input"]]  # last_hidden_state, attention_mask, admission_ticket
        self.tickets = TicketReturn()
        self.output_names = params.output_names()  # embedding
        self.pooling = Pooling.parse(params.str("pooling"))
        implementation = params.str("implementation")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"pool_normalize: implementation must be one of {list(IMPLEMENTATIONS)}; got {implementation!r}")
        self.gpu = implementation == "triton"
        if self.gpu:
            import torch

            if not torch.cuda.is_available():
                raise ValueError("pool_normalize: implementation 'triton' needs a CUDA device; render with --target cpu here")
            from kernels.pool_normalize_triton import pool_normalize_triton

            self.kernel = pool_normalize_triton
        self.placement = Placement.for_instance(args, "torch" if self.gpu else "numpy")
        if self.gpu:  # compile the kernel for this dtype and width now, not on the first request
            hidden = params.config["input"][0]
            dtype = {"TYPE_FP16": torch.float16, "TYPE_BF16": torch.bfloat16}.get(hidden["data_type"], torch.float32)
            with self.placement.scope():
                self.kernel(torch.ones(1, 1, int(hidden["dims"][-1]), dtype=dtype, device=self.placement.device),
                            torch.ones(1, 1, dtype=torch.int64, device=self.placement.device), self.pooling)
        pb_utils.Logger.log_info(f"pool_normalize: pooling={self.pooling.value} implementation={implementation}")

    def parse(self, request):
        if self.gpu:
            hidden, mask = (self.placement.array(input_tensor(request, name)) for name in self.input_names[:2])
            if tuple(hidden.shape[:2]) != tuple(mask.shape):
                raise InvalidInput(f"{self.input_names[1]} must have shape {tuple(hidden.shape[:2])}; got {tuple(mask.shape)}")
            if not bool(mask.bool().any(dim=1).all()):
                raise InvalidInput(f"{self.input_names[1]} must have at least one token per row; got an all-zero row")
            return hidden, mask
        hidden, mask = (input_array(request, name) for name in self.input_names[:2])
        if hidden.shape[:2] != mask.shape:
            raise InvalidInput(f"{self.input_names[1]} must have shape {hidden.shape[:2]}; got {mask.shape}")
        if not mask.any(axis=1).all():
            raise InvalidInput(f"{self.input_names[1]} must have at least one token per row; got an all-zero row")
        return hidden, mask

    def compute(self, batches):
        if self.gpu:  # one launch per request: requests differ in sequence length
            return [(self.kernel(hidden, mask, self.pooling).float().contiguous(),) for hidden, mask in batches]
        return [(pool_normalize_reference(hidden, mask, self.pooling).astype(np.float32, copy=False),) for hidden, mask in batches]

    def execute(self, requests):
        with self.placement.scope():  # this instance's GPU is current for every tensor and launch
            return self.tickets.execute(requests, lambda: execute_batched(requests, self.parse, self.compute, self.output_names))

    def finalize(self):
        self.tickets.close()
