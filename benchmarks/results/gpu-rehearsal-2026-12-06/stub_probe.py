"""The kit's tritonserver and its Python 3.12 stub, serving tests/assets/env_probe from the kit's venv.

Run with that venv's python, the repository on PYTHONPATH (the launcher's process only: the stub ignores it):
    PYTHONPATH=. /tmp/v312/bin/python benchmarks/results/gpu-rehearsal-2026-12-06/stub_probe.py
after copying tests/assets/env_probe into /tmp/probe312/repo/. Prints where the stub's modules came
from, then numpy's origin as it comes back over gRPC.
"""
import json
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from model_repository.launcher import ServerConfig, TritonServer, free_port

repo = Path("/tmp/probe312/repo")
config = ServerConfig(model_repository=repo, workdir=Path("/tmp/probe312/work"), grpc_port=free_port(), http_port=free_port(),
                      metrics_port=free_port(), model_control="none", supervise=False)
server = TritonServer(config)
server.start()
try:
    print(json.dumps(json.loads((repo / "env_probe" / "report.json").read_text())))
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{config.grpc_port}")
    index = grpcclient.InferInput("module_index", [1], "INT32")
    index.set_data_from_numpy(np.array([1], dtype=np.int32))  # 1: numpy, as in the probe's config
    print("numpy origin over the wire:", client.infer("env_probe", [index]).as_numpy("origin_utf8").tobytes().decode())
finally:
    server.stop()
