"""The tower format on disk, shared by training (which writes it) and build (which reads it).

A tower is a plain Hugging Face checkpoint folder plus:

- ``tower.json``: the :class:`TowerSpec` (pooling, token limit, instruction prefix,
  EOS handling, projection shape), so that export and serving tokenize and pool
  exactly as training did;
- ``projection.safetensors``, for a student whose width differs from its teacher's.

Free of torch on purpose: ``build/`` reads it inside containers that have no torch.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from kernels.pooling import Pooling

SPEC_FILE = "tower.json"
PROJECTION_FILE = "projection.safetensors"


class TowerFormatError(ValueError):
    """A tower folder's spec cannot be served as written; the message names the file and field."""


@dataclasses.dataclass
class TowerSpec:
    pooling: str = "auto"  # auto: last_token for decoders, mean for encoders
    max_tokens: int = 128
    prefix: str = ""  # instruction prefix put before every text
    append_eos: bool | None = None  # None: True for decoders
    projection: tuple[int, int] | None = None  # (in, out) when a projection follows the model
    eos_id: int | None = None  # the token appended when append_eos (recorded so that serving appends the same)

    def resolved(self, decoder: bool) -> "TowerSpec":
        pooling = Pooling.parse(("last_token" if decoder else "mean") if self.pooling == "auto" else self.pooling).value
        eos = decoder if self.append_eos is None else self.append_eos
        return dataclasses.replace(self, pooling=pooling, append_eos=eos)


def read_spec(folder: Path, for_serving: bool = False) -> TowerSpec | None:
    """The spec saved in ``folder``, or None for a plain Hugging Face folder.

    ``for_serving`` refuses a spec that appends EOS without naming the token: serving
    could not append the same one.
    """
    path = Path(folder) / SPEC_FILE
    if not path.exists():
        return None
    spec = TowerSpec(**json.loads(path.read_text(encoding="utf-8")))
    if spec.projection:
        spec.projection = tuple(spec.projection)
    if for_serving and spec.append_eos and spec.eos_id is None:
        raise TowerFormatError(f"{path}: field 'append_eos' is set but 'eos_id' is missing; load and save the tower again "
                               "with training/ so that serving appends the same token")
    return spec


def write_spec(folder: Path, spec: TowerSpec) -> Path:
    path = Path(folder) / SPEC_FILE
    path.write_text(json.dumps(dataclasses.asdict(spec), indent=2) + "\n", encoding="utf-8")
    return path
