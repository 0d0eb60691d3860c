"""topk_merge: the shards' top-k lists -> the global top-k (kernels.topk.merge_topk, ties to the lower id).

Each shard answered with global doc ids and at most its own row count; this model
checks k against the whole index and carries each winner's key, title and snippet
along. Every shard must report the same source index, or the request fails. It gives back
a ``retrieve`` request's admission ticket once it has answered (runtime.admission).
"""
import numpy as np
import triton_python_backend_utils as pb_utils

from kernels.topk import merge_topk
from runtime import InvalidInput
from runtime.adapter import TicketReturn, execute_batched, input_array
from runtime.params import ModelParams

FIELDS = ("doc_ids", "scores", "doc_keys", "titles", "snippets", "index_version")


class TritonPythonModel:
    def initialize(self, args):
        params = ModelParams(args["model_config"])
        self.output_names = params.output_names()
        self.tickets = TicketReturn()
        self.shards = params.int("shard_count")
        self.max_k = min(params.int("max_k"), params.int("index_rows"))
        self.index_version = params.str("index_version")
        pb_utils.Logger.log_info(f"topk_merge: {self.shards} shards of index {self.index_version}")

    def parse(self, request):
        k = np.unique(input_array(request, "k"))
        if k.size != 1 or not 1 <= int(k[0]) <= self.max_k:
            raise InvalidInput(f"k must be in [1, {self.max_k}]; got {k.tolist()}")
        parts = [{f: input_array(request, f"{f}_{i}") for f in FIELDS} for i in range(self.shards)]
        versions = {v.decode() if isinstance(v, bytes) else str(v) for p in parts for v in p["index_version"].ravel()}
        if any(not v.startswith(self.index_version) for v in versions):
            raise InvalidInput(f"shards answered from index versions {sorted(versions)}, not all of {self.index_version}")
        return int(k[0]), parts

    def compute(self, batches):
        results = []
        for k, parts in batches:
            ids, scores = merge_topk([(p["doc_ids"], p["scores"]) for p in parts], k)
            lookup = {}
            for p in parts:
                for r in range(p["doc_ids"].shape[0]):
                    for c in range(p["doc_ids"].shape[1]):
                        lookup[(r, int(p["doc_ids"][r, c]))] = (p["doc_keys"][r, c], p["titles"][r, c], p["snippets"][r, c])
            strings = [[lookup[(r, int(i))] for i in row] for r, row in enumerate(ids)]
            results.append((ids, scores,
                            *(np.array([[s[j] for s in row] for row in strings], dtype=np.object_) for j in range(3)),
                            np.full((ids.shape[0], 1), self.index_version.encode(), dtype=np.object_)))
        return results

    def execute(self, requests):
        return self.tickets.execute(requests, lambda: execute_batched(requests, self.parse, self.compute, self.output_names))

    def finalize(self):
        self.tickets.close()
