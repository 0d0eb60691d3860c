"""Test-only model: where does each module import from inside the stub?

At load it writes {module: file} to report.json in its model folder; at inference,
module_index -> UTF-8 bytes of that module's file.
"""
import importlib
import json
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


def origin(name):
    if name == "sys.executable":
        return sys.executable
    try:
        return importlib.import_module(name).__file__
    except ImportError as e:
        return f"ImportError: {e}"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.modules = config["parameters"]["modules"]["string_value"].split(",")
        with open(f"{args['model_repository']}/report.json", "w", encoding="utf-8") as f:
            json.dump({name: origin(name) for name in self.modules}, f)

    def execute(self, requests):
        responses = []
        for request in requests:
            name = self.modules[int(pb_utils.get_input_tensor_by_name(request, "module_index").as_numpy()[0])]
            out = np.frombuffer(origin(name).encode("utf-8"), dtype=np.uint8)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("origin_utf8", out)]))
        return responses
