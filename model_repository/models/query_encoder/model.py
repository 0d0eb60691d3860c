"""query_encoder (python flavours): input_ids, attention_mask -> last_hidden_state.

With the config parameter ``pooling`` (render's ``pooling_step`` "encoder", the CPU default),
it also pools and L2-normalises, with the same function as pool_normalize, and answers
``embedding``: one python hop fewer per request. It then gives back the admission ticket of an
``embed`` request (``admission_ticket``, from the tokenizer; see runtime.admission) once it is
encoded; a ``retrieve`` request keeps its ticket until its search has answered.

With the parameter ``search`` as well (render's ``search_step`` "encoder", CPU only), it holds the index
(``runtime.search.IndexSearch``, as mips_topk) and answers a request that carries the optional input ``k``
with the search's outputs: ``retrieve`` is then tokenizer -> query_encoder, and every ticket comes back here.

``implementation`` in config.pbtxt chooses the engine, and nothing falls back:

- ``onnx``: ONNX Runtime on the CPU;
- ``torch``: the tower's weights through PyTorch (``runtime/torch_encoder.py``): fp16 and
  CUDA graphs on the GPU Triton gave this instance, float32 on the CPU. The GPU encoder
  for machines without TensorRT; its output stays on the GPU and leaves by DLPack.

All valid requests of a dynamic batch run as one call, padded to the longest; each
answer is cut back to its own length. In NVIDIA's container the GPU flavour is a
TensorRT plan served by Triton's tensorrt backend, with no python at all
(``build/tensorrt.py``).
"""
import numpy as np
import triton_python_backend_utils as pb_utils

from kernels.pooling import Pooling, pool_normalize_reference
from runtime import InvalidInput
from runtime.adapter import TicketReturn, execute_batched, input_array, version_folder
from runtime.files import verify_artifacts
from runtime.params import ModelParams
from runtime.placement import Placement
from runtime.search import OUTPUTS, IndexSearch

IMPLEMENTATIONS = ("onnx", "torch")


class TritonPythonModel:
    def initialize(self, args):
        params = ModelParams(args["model_config"])
        self.input_names = [i["name"] for i in params.config["input"]][:2]  # input_ids, attention_mask
        self.output_names = params.output_names()  # last_hidden_state, or embedding when it pools
        pooling = params.optional("pooling", "")
        self.pooling = Pooling.parse(pooling) if pooling else None
        self.tickets = TicketReturn() if self.pooling else None  # else pool_normalize gives them back
        self.max_tokens = params.int("max_tokens")
        implementation = params.optional("implementation", "onnx")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"query_encoder: implementation must be one of {list(IMPLEMENTATIONS)}; got {implementation!r}")
        folder = version_folder(args)
        verify_artifacts(folder)  # the ONNX graph or the tower's weights, against the sha256 rendered with them
        if implementation == "torch":
            from runtime.torch_encoder import TorchEncoder

            device = params.str("device")
            if device == "cuda":  # the GPU Triton gave this instance
                device = str(Placement.for_instance(args, "torch").device)
            self.encoder = TorchEncoder(f"{folder}/{params.str('encoder_dir')}", device, params.str("dtype"),
                                        params.int("cuda_graphs") == 1, [int(b) for b in params.str("batch_buckets").split(",")],
                                        params.int("seq_multiple"), self.max_tokens)
        else:
            from runtime.encoder import OnnxEncoder

            self.encoder = OnnxEncoder(f"{folder}/{params.str('onnx_file')}", params.int("intra_op_threads"))
        self.search = None
        if search := params.optional("search", ""):  # retrieve's search in this stub: no mips_topk hop
            self.search = IndexSearch(params, folder, params.str("fingerprint"), args, search)
            pb_utils.Logger.log_info(f"query_encoder searches: {self.search.describe()}")

    def parse(self, request):
        ids, mask = (input_array(request, name) for name in self.input_names)
        if ids.shape != mask.shape:
            raise InvalidInput(f"{self.input_names[0]} and {self.input_names[1]} must have the same shape; got {ids.shape} and {mask.shape}")
        if ids.shape[1] > self.max_tokens:
            raise InvalidInput(f"{self.input_names[0]} exceeds {self.max_tokens} tokens; got {ids.shape[1]}")
        if self.pooling and not mask.any(axis=1).all():
            raise InvalidInput(f"{self.input_names[1]} must have at least one token per row; got an all-zero row")
        k = pb_utils.get_input_tensor_by_name(request, "k") if self.search else None
        return ids, mask, None if k is None else self.search.parse_k("k", k.as_numpy())

    def compute(self, batches):
        hidden = self.encoder.encode_ragged([(ids, mask) for ids, mask, _ in batches])
        if not self.pooling:
            return [(h,) for h in hidden]
        embeddings = [pool_normalize_reference(h, mask, self.pooling).astype(np.float32, copy=False)
                      for h, (_, mask, _) in zip(hidden, batches)]
        searched = [(e, k) for e, (_, _, k) in zip(embeddings, batches) if k is not None]
        found = iter(self.search.answer(searched) if searched else [])
        return [{"embedding": e} if k is None else {"embedding": e, **dict(zip(OUTPUTS, next(found)))}
                for e, (_, _, k) in zip(embeddings, batches)]

    def execute(self, requests):
        run = lambda: execute_batched(requests, self.parse, self.compute, self.output_names)  # noqa: E731
        return self.tickets.execute(requests, run) if self.tickets else run()

    def finalize(self):
        if self.tickets:
            self.tickets.close()
