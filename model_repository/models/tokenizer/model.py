"""tokenizer: TEXT (BYTES) -> input_ids, attention_mask (INT64). Thin adapter over runtime.text."""
from runtime import InvalidInput
from runtime.adapter import execute_batched, input_array, version_folder
from runtime.files import verify_artifacts
from runtime.params import ModelParams
from runtime.text import TextTokenizer, decode_texts


class TritonPythonModel:
    def initialize(self, args):
        params = ModelParams(args["model_config"])
        self.text_name = params.config["input"][0]["name"]
        self.output_names = params.output_names()  # input_ids, attention_mask
        self.max_chars = params.int("max_chars")
        self.max_rows = params.int("max_rows_per_request")
        eos = params.str("eos_id")
        verify_artifacts(version_folder(args))  # tokenizer.json against the sha256 rendered with it
        self.tokenizer = TextTokenizer(f"{version_folder(args)}/{params.str('tokenizer_file')}", params.int("max_tokens"),
                                       params.int("pad_to_multiple"), params.str("prefix"), int(eos) if eos else None)

    def parse(self, request):
        raw = input_array(request, self.text_name)
        if raw.shape[0] > self.max_rows:
            raise InvalidInput(f"{self.text_name} has {raw.shape[0]} rows; the limit is {self.max_rows} per request")
        return decode_texts(raw.reshape(-1), self.max_chars, field=self.text_name)

    def compute(self, batches):
        return [self.tokenizer(texts) for texts in batches]

    def execute(self, requests):
        return execute_batched(requests, self.parse, self.compute, self.output_names)
