"""Test-only model: answers with the file a module is imported from inside the stub."""
import importlib
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            name = pb_utils.get_input_tensor_by_name(request, "MODULE").as_numpy()[0].decode()
            origin = sys.executable if name == "sys.executable" else importlib.import_module(name).__file__
            out = pb_utils.Tensor("ORIGIN", np.array([origin.encode()], dtype=np.object_))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
