"""tokenizer: text (BYTES) -> input_ids, attention_mask (INT64) [, admission_ticket (INT64)].

Thin adapter over runtime.text. Rendered twice from this code: ``tokenizer`` for clients, and
``ensemble_tokenizer``, the ensembles' first step and the server's admission point
(runtime.admission): there a valid request whose predicted wait exceeds ``admission_budget_ms``, or
its own timeout, is answered UNAVAILABLE at once, and an admitted one carries its ticket to the step
that gives it back. Only a config with the ``admission_ticket`` output admits: a ticket handed to a
client would never be given back, and would hold its rows until it expired.
"""
import numpy as np

from runtime import InvalidInput, Overloaded
from runtime.adapter import execute_batched, input_array, version_folder
from runtime.admission import Admission, refusal, table_path
from runtime.files import verify_artifacts
from runtime.params import ModelParams
from runtime.text import TextTokenizer, decode_texts


class TritonPythonModel:
    def initialize(self, args):
        params = ModelParams(args["model_config"])
        self.text_name = params.config["input"][0]["name"]
        self.output_names = params.output_names()  # input_ids, attention_mask (, admission_ticket)
        self.max_chars = params.int("max_chars")
        self.max_rows = params.int("max_rows_per_request")
        eos = params.str("eos_id")
        verify_artifacts(version_folder(args))  # tokenizer.json against the sha256 rendered with it
        self.tokenizer = TextTokenizer(f"{version_folder(args)}/{params.str('tokenizer_file')}", params.int("max_tokens"),
                                       params.int("pad_to_multiple"), params.str("prefix"), int(eos) if eos else None)
        self.admission = None  # the clients' tokenizer: no tickets, and it never clears the ensembles' table
        if "admission_ticket" in self.output_names:
            self.admission = Admission(table_path(), float(params.str("admission_budget_ms")), float(params.str("admission_ttl_s")))
            self.admission.reset()  # a reload follows a dead stub: the tickets it held are lost

    def parse(self, request):
        raw = input_array(request, self.text_name)
        if raw.shape[0] > self.max_rows:
            raise InvalidInput(f"{self.text_name} has {raw.shape[0]} rows; the limit is {self.max_rows} per request")
        texts = decode_texts(raw.reshape(-1), self.max_chars, field=self.text_name)
        if self.admission is None:
            return texts, None
        decision = self.admission.admit(len(texts), request.timeout())
        if self.admission.budget_ms and not decision.ticket:
            raise Overloaded(refusal(decision, len(texts), self.admission.budget_ms, request.timeout()))
        return texts, decision.ticket

    def compute(self, batches):
        if self.admission is None:
            return [self.tokenizer(texts) for texts, _ in batches]
        return [(*self.tokenizer(texts), np.full((len(texts), 1), ticket, dtype=np.int64)) for texts, ticket in batches]

    def execute(self, requests):
        return execute_batched(requests, self.parse, self.compute, self.output_names)

    def finalize(self):
        if self.admission is not None:
            self.admission.close()
