"""query_encoder (CPU flavour): input_ids, attention_mask -> last_hidden_state via ONNX Runtime.

All valid requests of a dynamic batch run as one ONNX Runtime call, padded to the
longest; each answer is cut back to its own length. The GPU flavour is a TensorRT
plan served by Triton's tensorrt backend, with no python at all (``build/tensorrt.py``).
"""
from runtime import InvalidInput
from runtime.adapter import execute_batched, input_array, version_folder
from runtime.encoder import OnnxEncoder
from runtime.params import ModelParams


class TritonPythonModel:
    def initialize(self, args):
        params = ModelParams(args["model_config"])
        self.input_names = [i["name"] for i in params.config["input"]]  # input_ids, attention_mask
        self.output_names = params.output_names()  # last_hidden_state
        self.max_tokens = params.int("max_tokens")
        self.encoder = OnnxEncoder(f"{version_folder(args)}/{params.str('onnx_file')}", params.int("intra_op_threads"))

    def parse(self, request):
        ids, mask = (input_array(request, name) for name in self.input_names)
        if ids.shape != mask.shape:
            raise InvalidInput(f"{self.input_names[0]} and {self.input_names[1]} must have the same shape; got {ids.shape} and {mask.shape}")
        if ids.shape[1] > self.max_tokens:
            raise InvalidInput(f"{self.input_names[0]} exceeds {self.max_tokens} tokens; got {ids.shape[1]}")
        return ids, mask

    def compute(self, batches):
        return [(hidden,) for hidden in self.encoder.encode_ragged(batches)]

    def execute(self, requests):
        return execute_batched(requests, self.parse, self.compute, self.output_names)
