"""pool_normalize: last_hidden_state, attention_mask -> L2-normalised embedding.

The implementation is chosen explicitly by the config parameter ``implementation``
and logged at load; nothing falls back silently.
"""
import triton_python_backend_utils as pb_utils

from kernels.pooling import Pooling, pool_normalize_reference
from runtime import InvalidInput
from runtime.adapter import execute_batched, input_array
from runtime.params import ModelParams

IMPLEMENTATIONS = {"numpy": pool_normalize_reference}


class TritonPythonModel:
    def initialize(self, args):
        params = ModelParams(args["model_config"])
        self.input_names = [i["name"] for i in params.config["input"]]  # last_hidden_state, attention_mask
        self.output_names = params.output_names()  # embedding
        self.pooling = Pooling.parse(params.str("pooling"))
        implementation = params.str("implementation")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"pool_normalize: implementation must be one of {sorted(IMPLEMENTATIONS)}; got {implementation!r}")
        self.pool = IMPLEMENTATIONS[implementation]
        pb_utils.Logger.log_info(f"pool_normalize: pooling={self.pooling.value} implementation={implementation}")

    def parse(self, request):
        hidden, mask = (input_array(request, name) for name in self.input_names)
        if hidden.shape[:2] != mask.shape:
            raise InvalidInput(f"{self.input_names[1]} must have shape {hidden.shape[:2]}; got {mask.shape}")
        if not mask.any(axis=1).all():
            raise InvalidInput(f"{self.input_names[1]} must have at least one token per row; got an all-zero row")
        return hidden, mask

    def compute(self, batches):
        return [(self.pool(hidden, mask, self.pooling),) for hidden, mask in batches]

    def execute(self, requests):
        return execute_batched(requests, self.parse, self.compute, self.output_names)
