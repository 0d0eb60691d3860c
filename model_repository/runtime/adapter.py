"""The shape every python-backend model shares: validate each request, compute the
valid ones together, answer each request in order.

A bad request gets its own INVALID_ARG response; the other requests of the same
dynamic batch still get their answers. Only a broken model raises. This module is
imported only inside the Triton python stub (it needs ``triton_python_backend_utils``).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from . import InvalidInput, Overloaded

REFUSALS = (InvalidInput, Overloaded)  # a request refused with its own error; its batch-mates go on


def input_tensor(request, name: str):
    """The request's input ``name`` where Triton put it (host or GPU; see ``runtime.placement``)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise InvalidInput(f"input '{name}' is required")
    return tensor


def input_array(request, name: str) -> np.ndarray:
    return input_tensor(request, name).as_numpy()


def output_tensors(names: Sequence[str], arrays: Sequence[Any]) -> list:
    """numpy arrays, or device tensors (torch, CuPy) handed over by DLPack without a copy."""
    out = []
    for name, array in zip(names, arrays, strict=True):
        if not isinstance(array, np.ndarray):
            out.append(pb_utils.Tensor.from_dlpack(name, array))
            continue
        if array.dtype.kind in "SUO":
            array = np.array([a.encode("utf-8") if isinstance(a, str) else a for a in array.ravel()], dtype=np.object_).reshape(array.shape)
        out.append(pb_utils.Tensor(name, array))
    return out


def execute_batched(
    requests: Sequence[Any],
    parse: Callable[[Any], Any],
    compute: Callable[[list[Any]], list[Sequence[np.ndarray]]],
    output_names: Sequence[str],
) -> list:
    """parse(request) validates one request (raising InvalidInput, or Overloaded when it is not
    admitted) and returns its inputs; compute(valid) returns, per valid request and in order, one
    tuple of arrays in the order of ``output_names``, or a dict naming the outputs that request gets."""
    parsed: list[Any] = []
    for request in requests:
        try:
            parsed.append(parse(request))
        except REFUSALS as e:
            parsed.append(e)
    valid = [p for p in parsed if not isinstance(p, REFUSALS)]
    results = iter(compute(valid) if valid else [])
    responses = []
    for p in parsed:
        if isinstance(p, REFUSALS):
            code = pb_utils.TritonError.INVALID_ARG if isinstance(p, InvalidInput) else pb_utils.TritonError.UNAVAILABLE
            error = pb_utils.TritonError(str(p), code)
            responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        else:
            result = next(results)
            names, arrays = (list(result), list(result.values())) if isinstance(result, dict) else (output_names, result)
            responses.append(pb_utils.InferenceResponse(output_tensors=output_tensors(names, arrays)))
    return responses


class TicketReturn:
    """The step that gives admission tickets back (runtime.admission): pooling for ``embed``, the search's
    last step for ``retrieve``. A ticket is the optional input ``admission_ticket``, absent outside the
    ensembles; it comes back once the step has answered, whatever it answered. Taking part, the step
    clears the table at (re)load: a reload follows a dead stub, whose requests' tickets are lost."""

    NAME = "admission_ticket"

    def __init__(self):
        from .admission import Admission, table_path

        self.admission = Admission(table_path(), 0)  # gives tickets back and measures; the tokenizer admits
        self.admission.reset()

    def execute(self, requests: Sequence[Any], run: Callable[[], list]) -> list:
        tickets = [pb_utils.get_input_tensor_by_name(r, self.NAME) for r in requests]
        try:
            return run()
        finally:  # answered or refused: these rows no longer count, and their time is one service sample
            self.admission.release(*(int(t.as_numpy().flat[0]) for t in tickets if t is not None))

    def close(self) -> None:
        self.admission.close()


def version_folder(args: dict) -> str:
    return f"{args['model_repository']}/{args['model_version']}"
