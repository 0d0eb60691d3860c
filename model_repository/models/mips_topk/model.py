"""mips_topk: embedding, k -> doc_ids, scores, doc_keys, titles, snippets, index_version.

The search itself, its index checks and its kernels (``implementation``: numpy, faiss, chunked, cupy or
torch) are ``runtime.search.IndexSearch``, shared with the CPU query encoder that searches in its own
stub (render's ``search_step`` "encoder"). Unsharded, this step gives back a ``retrieve`` request's
admission ticket once it has answered (runtime.admission). ``cupy`` without a CUDA device refuses to
load; each instance searches on the GPU Triton gave it (``runtime.placement``), so the shards of a
sharded index sit on their own GPUs.
"""
import triton_python_backend_utils as pb_utils

from runtime.adapter import TicketReturn, execute_batched, input_tensor, version_folder
from runtime.params import ModelParams
from runtime.search import IndexSearch


class TritonPythonModel:
    def initialize(self, args):
        params = ModelParams(args["model_config"])
        self.input_names = [i["name"] for i in params.config["input"]]  # embedding, k (, admission_ticket)
        self.tickets = TicketReturn()
        self.output_names = params.output_names()
        self.search = IndexSearch(params, version_folder(args), params.str("query_tower_fingerprint"), args, params.str("implementation"))
        self.placement = self.search.placement
        pb_utils.Logger.log_info(f"mips_topk: {self.search.describe()}")

    def parse(self, request):
        embedding = self.placement.array(input_tensor(request, self.input_names[0]))  # on this instance's device
        k = self.search.parse_k(self.input_names[1], self.placement.host(input_tensor(request, self.input_names[1])))
        self.search.check_embedding(self.input_names[0], embedding)
        return embedding, k

    def execute(self, requests):
        with self.placement.scope():  # this instance's GPU is current for every array and launch
            return self.tickets.execute(requests, lambda: execute_batched(requests, self.parse, self.search.answer, self.output_names))

    def finalize(self):
        self.tickets.close()
