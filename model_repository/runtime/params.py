"""Typed access to a model's ``parameters { }`` block: config.pbtxt is the source of truth."""
from __future__ import annotations

import json
from typing import Any


class ModelParams:
    def __init__(self, model_config: dict[str, Any] | str):
        config = json.loads(model_config) if isinstance(model_config, str) else model_config
        self.model_name = config.get("name", "?")
        self.config = config
        self._raw = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}

    def _get(self, key: str) -> str:
        if key not in self._raw:
            raise KeyError(f"model '{self.model_name}': config.pbtxt has no parameter '{key}'")
        return self._raw[key]

    def str(self, key: str) -> str:
        return self._get(key)

    def optional(self, key: str, default: str) -> str:
        return self._raw.get(key, default)

    def int(self, key: str) -> int:
        value = self._get(key)
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"model '{self.model_name}': parameter '{key}' must be an integer; got {value!r}") from None

    def output_names(self) -> list[str]:
        return [o["name"] for o in self.config.get("output", [])]
