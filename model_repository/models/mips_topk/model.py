"""mips_topk: embedding, k -> doc_ids, scores, doc_keys, titles, snippets, index_version.

The index is loaded and verified once at model load; a manifest that pairs with another query tower,
or a failed checksum, refuses the load. All valid requests of a dynamic batch share one search at the
largest k asked for. Unsharded, it gives back a ``retrieve`` request's admission ticket once it has
answered (runtime.admission).

The implementation is chosen explicitly by the config parameter ``implementation``:
``numpy`` (one GEMM + argpartition, CPU; torch's MKL scores a batch of 2+), ``chunked``
(kernels/topk_chunked.py on numpy, CPU), ``cupy`` (the same chunked algorithm on the GPU:
the index moves to the GPU once at load, query embeddings arrive by DLPack; only the k ids
and scores per query come back to the host, to look up titles) or ``torch`` (kernels/topk_torch.py,
the GPU search where CuPy cannot run beside the stub's numpy 1.x). ``cupy`` without a CUDA device
refuses to load; each instance searches on the GPU Triton gave it (``runtime.placement``), so the
shards of a sharded index sit on their own GPUs.
"""
import numpy as np
import triton_python_backend_utils as pb_utils

from kernels.topk import NumpyTopK
from kernels.topk_chunked import ChunkedTopK, cupy_topk
from kernels.topk_torch import TorchTopK
from runtime import InvalidInput
from runtime.adapter import TicketReturn, execute_batched, input_tensor, version_folder
from runtime.cpus import take_nice
from runtime.index import load_index, snippet
from runtime.params import ModelParams
from runtime.placement import Placement, cupy_devices

IMPLEMENTATIONS = {"numpy": NumpyTopK, "chunked": ChunkedTopK, "cupy": cupy_topk, "torch": TorchTopK}


class TritonPythonModel:
    def initialize(self, args):
        params = ModelParams(args["model_config"])
        take_nice("mips_topk", params.int("nice"), pb_utils.Logger.log_info)
        self.input_names = [i["name"] for i in params.config["input"]]  # embedding, k (, admission_ticket)
        self.tickets = TicketReturn()
        self.output_names = params.output_names()
        self.index = load_index(f"{version_folder(args)}/{params.str('index_dir')}", params.str("query_tower_fingerprint"), mmap=True)
        if params.int("index_rows") != len(self.index):
            raise ValueError(f"mips_topk: config says index_rows={params.int('index_rows')}; the index has {len(self.index)}")
        implementation = params.str("implementation")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"mips_topk: implementation must be one of {sorted(IMPLEMENTATIONS)}; got {implementation!r}")
        if implementation == "cupy" and not (cuda := cupy_devices())[0]:
            raise ValueError(f"mips_topk: implementation 'cupy' needs CuPy and a CUDA device ({cuda[1]}); "
                             "render with --target cpu on this machine")
        self.placement = Placement.for_instance(args, implementation if implementation in ("cupy", "torch") else "numpy")
        self.xp = self.placement.xp
        c = self.index.compressed
        if c and implementation == "torch":
            raise ValueError("mips_topk: a compressed index searches with numpy, chunked or cupy; got implementation 'torch'")
        with self.placement.scope():  # the index goes to this instance's GPU
            if c:  # candidates from the compressed copy, ranked exactly with the float16 vectors
                from kernels.compressed import RescoringTopK

                self.search = RescoringTopK(self.index.rows, c["kind"], c["codes"], c["scales"], c["rescore"], xp=self.xp)
                implementation = f"{implementation}+{c['kind']}(rescore {c['rescore']})"
            else:
                if implementation == "numpy":  # the float32 copy; which BLAS scores a batch (kernels/topk.py)
                    self.search = NumpyTopK(self.index.embeddings, gemm=params.optional("gemm", "auto"))
                    implementation = f"numpy(gemm {self.search.gemm})"
                else:
                    self.search = IMPLEMENTATIONS[implementation](self.index.rows.float16())  # no fp32 copy
            for rows in (1, 2):  # warm: kernels, cuBLAS handle; on the CPU a batch of 2+ takes torch's MKL, ~9 ms on first use
                self.search.search(self.xp.zeros((rows, self.search.dim), dtype=self.xp.float32), 1)
        # One shard of a sharded index ("i/n"): answer with global ids, and at most the
        # shard's own rows; topk_merge checks k against the whole index.
        self.shard = params.optional("shard", "")
        self.id_offset = int(self.index.manifest.get("id_offset", 0))
        self.max_k = params.int("max_k") if self.shard else min(params.int("max_k"), len(self.index))
        self.snippet_chars = params.int("snippet_chars")
        pb_utils.Logger.log_info(
            f"mips_topk: index {self.index.version} ({len(self.index)} x {self.search.dim}) implementation={implementation}"
        )

    def parse(self, request):
        embedding = self.placement.array(input_tensor(request, self.input_names[0]))  # on this instance's device
        ks = np.unique(self.placement.host(input_tensor(request, self.input_names[1])))  # k arrives in host memory
        if ks.size != 1:
            raise InvalidInput(f"{self.input_names[1]} must be the same for every row of a request; got {ks.tolist()}")
        k = int(ks[0])
        if self.shard:  # topk_merge judges k against the whole index (and gives the ticket back): never refuse here
            k = min(max(k, 1), self.max_k)
        if not 1 <= k <= self.max_k:
            raise InvalidInput(f"{self.input_names[1]} must be in [1, {self.max_k}]; got {k}")
        if embedding.shape[1:] != (self.search.dim,):
            raise InvalidInput(f"{self.input_names[0]} must have {self.search.dim} dimensions; got shape {embedding.shape}")
        if not bool(self.xp.isfinite(embedding).all()):
            raise InvalidInput(f"{self.input_names[0]} must be finite; got NaN or inf")
        return embedding, k

    def compute(self, batches):
        ids, scores = self.search.search(self.xp.concatenate([e for e, _ in batches]), min(len(self.index), max(k for _, k in batches)))
        ids, scores = self.placement.to_numpy(ids), self.placement.to_numpy(scores)
        results, row = [], 0
        for embedding, k in batches:
            rows = slice(row, row + embedding.shape[0])
            row += embedding.shape[0]
            doc_ids = ids[rows, :k]
            results.append((
                doc_ids + self.id_offset,
                scores[rows, :k],
                np.array([[self.index.keys[i] for i in r] for r in doc_ids], dtype=np.object_),
                np.array([[self.index.titles[i] for i in r] for r in doc_ids], dtype=np.object_),
                np.array([[snippet(self.index.texts[i], self.snippet_chars) for i in r] for r in doc_ids], dtype=np.object_),
                np.full((embedding.shape[0], 1), self.index.version, dtype=np.object_),
            ))
        return results

    def execute(self, requests):
        with self.placement.scope():  # this instance's GPU is current for every array and launch
            return self.tickets.execute(requests, lambda: execute_batched(requests, self.parse, self.compute, self.output_names))

    def finalize(self):
        self.tickets.close()
