"""Where a GPU model's tensors live, and how each request input gets there.

Triton hands a python model its inputs where it put them, which is not always where
the model computes:

- with ``FORCE_CPU_ONLY_INPUT_TENSORS=no`` an input may still arrive in (pinned) host
  memory: small control inputs such as ``k`` always do, and intermediate tensors do
  when Triton's CUDA memory pool is full;
- an instance runs on the GPU Triton assigned it (``model_instance_device_id``), not
  on GPU 0: every shard of a sharded index has its own.

``Placement`` is one instance's device and array library (numpy, CuPy or torch):
``array`` brings an input onto that device whatever its origin, ``host`` reads a small
input as a numpy array, and ``scope`` makes the device current for kernel launches and
allocations. Inputs are duck-typed like ``pb_utils.Tensor`` (``is_cpu``, ``as_numpy``,
``to_dlpack``), so the tests drive this module without a server.
"""
from __future__ import annotations

import contextlib

import numpy as np

LIBRARIES = ("numpy", "cupy", "torch")


def cupy_devices() -> tuple[int, str]:
    """(CUDA devices CuPy sees, why none when 0): ImportError, or CUDARuntimeError without a driver."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()), ""
    except Exception as e:  # noqa: BLE001 - any failure means no device for CuPy; the caller names it
        return 0, f"{type(e).__name__}: {e}"


class Placement:
    def __init__(self, library: str = "numpy", device_id: int = 0, device_type: str = "cuda"):
        """``device_type`` 'cpu' runs the torch path on the CPU (tests)."""
        if library not in LIBRARIES:
            raise ValueError(f"library must be one of {list(LIBRARIES)}; got {library!r}")
        self.library, self.device_id = library, int(device_id)
        if library == "cupy":
            import cupy

            self.xp = cupy
        elif library == "torch":
            import torch

            self.xp = torch
            self.device = torch.device("cpu") if device_type == "cpu" else torch.device("cuda", self.device_id)
        else:
            self.xp = np

    @classmethod
    def for_instance(cls, args: dict, library: str) -> "Placement":
        """The device of this model instance, as Triton's ``initialize`` args name it."""
        kind = str(args.get("model_instance_kind", "CPU")).upper()
        if library != "numpy" and kind != "GPU":
            raise ValueError(f"implementation on {library} needs a KIND_GPU instance; this one is {kind}")
        return cls(library, int(args.get("model_instance_device_id", 0) or 0))

    def scope(self):
        """Make this instance's device current (allocations, kernel launches, cuBLAS handles)."""
        if self.library == "cupy":
            return self.xp.cuda.Device(self.device_id)
        if self.library == "torch" and self.device.type == "cuda":
            return self.xp.cuda.device(self.device_id)
        return contextlib.nullcontext()

    def array(self, tensor):
        """The input as an array of this library on this instance's device; host inputs are copied over once."""
        if self.library == "numpy":  # a CPU instance: Triton hands it host tensors only
            return tensor.as_numpy()
        if tensor.is_cpu():
            host = tensor.as_numpy()
            if self.library == "torch":
                return self.xp.from_numpy(np.ascontiguousarray(host)).to(self.device)
            with self.scope():
                return self.xp.asarray(host)
        value = self.xp.from_dlpack(tensor.to_dlpack())
        if self.library == "torch":
            return value.to(self.device)
        if value.device.id != self.device_id:  # another GPU's memory: a peer copy onto ours
            with self.scope():
                value = self.xp.asarray(value)
        return value

    def host(self, tensor) -> np.ndarray:
        """A small input (``k``) as a numpy array, from host or device memory."""
        if tensor.is_cpu() or self.library == "numpy":
            return tensor.as_numpy()
        return self.to_numpy(self.xp.from_dlpack(tensor.to_dlpack()))

    def to_numpy(self, value) -> np.ndarray:
        """A result of this library back on the host."""
        if self.library == "torch":
            return value.cpu().numpy()
        return self.xp.asnumpy(value) if self.library == "cupy" else value
