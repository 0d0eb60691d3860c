"""mips_topk: embedding, k -> doc_ids, scores, doc_keys, titles, snippets, index_version.

The index is loaded and verified once at model load; a manifest that pairs with
another query tower, or a failed checksum, refuses the load. All valid requests of
a dynamic batch share one search at the largest k asked for.
"""
import numpy as np
import triton_python_backend_utils as pb_utils

from kernels.topk import NumpyTopK
from runtime import InvalidInput
from runtime.adapter import execute_batched, input_array, version_folder
from runtime.index import load_index, snippet
from runtime.params import ModelParams

IMPLEMENTATIONS = {"numpy": NumpyTopK}


class TritonPythonModel:
    def initialize(self, args):
        params = ModelParams(args["model_config"])
        self.input_names = [i["name"] for i in params.config["input"]]  # embedding, k
        self.output_names = params.output_names()
        self.index = load_index(f"{version_folder(args)}/{params.str('index_dir')}", params.str("query_tower_fingerprint"))
        if params.int("index_rows") != len(self.index):
            raise ValueError(f"mips_topk: config says index_rows={params.int('index_rows')}; the index has {len(self.index)}")
        implementation = params.str("implementation")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"mips_topk: implementation must be one of {sorted(IMPLEMENTATIONS)}; got {implementation!r}")
        self.search = IMPLEMENTATIONS[implementation](self.index.embeddings)
        self.max_k = min(params.int("max_k"), len(self.index))
        self.snippet_chars = params.int("snippet_chars")
        pb_utils.Logger.log_info(
            f"mips_topk: index {self.index.version} ({len(self.index)} x {self.search.dim}) implementation={implementation}"
        )

    def parse(self, request):
        embedding, k = (input_array(request, name) for name in self.input_names)
        ks = np.unique(k)
        if ks.size != 1:
            raise InvalidInput(f"{self.input_names[1]} must be the same for every row of a request; got {ks.tolist()}")
        k = int(ks[0])
        if not 1 <= k <= self.max_k:
            raise InvalidInput(f"{self.input_names[1]} must be in [1, {self.max_k}]; got {k}")
        if embedding.shape[1:] != (self.search.dim,):
            raise InvalidInput(f"{self.input_names[0]} must have {self.search.dim} dimensions; got shape {embedding.shape}")
        if not np.isfinite(embedding).all():
            raise InvalidInput(f"{self.input_names[0]} must be finite; got NaN or inf")
        return embedding, k

    def compute(self, batches):
        ids, scores = self.search.search(np.concatenate([e for e, _ in batches]), max(k for _, k in batches))
        results, row = [], 0
        for embedding, k in batches:
            rows = slice(row, row + embedding.shape[0])
            row += embedding.shape[0]
            doc_ids = ids[rows, :k]
            results.append((
                doc_ids,
                scores[rows, :k],
                np.array([[self.index.keys[i] for i in r] for r in doc_ids], dtype=np.object_),
                np.array([[self.index.titles[i] for i in r] for r in doc_ids], dtype=np.object_),
                np.array([[snippet(self.index.texts[i], self.snippet_chars) for i in r] for r in doc_ids], dtype=np.object_),
                np.full((embedding.shape[0], 1), self.index.version, dtype=np.object_),
            ))
        return results

    def execute(self, requests):
        return execute_batched(requests, self.parse, self.compute, self.output_names)
