"""runtime.placement: every input reaches the instance's device, whatever memory Triton put it in.

The inputs are stand-ins with pb_utils.Tensor's interface. A host stand-in refuses to be
read through DLPack, as CuPy refuses a host capsule: that is how every GPU retrieve failed
when ``k`` (always in host memory) was read with ``cupy.from_dlpack``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model_repository.runtime.placement import Placement


class HostTensor:
    def __init__(self, array):
        self.array = array

    def is_cpu(self):
        return True

    def as_numpy(self):
        return self.array

    def to_dlpack(self):
        raise AssertionError("a host input was read through DLPack (CuPy refuses host memory)")


class DeviceTensor:
    """A tensor in 'device' memory: only DLPack reads it (a torch tensor stands in for the GPU's)."""

    def __init__(self, value: torch.Tensor):
        self.value = value

    def is_cpu(self):
        return False

    def as_numpy(self):
        raise AssertionError("as_numpy() on a GPU tensor")

    def to_dlpack(self):
        return torch.utils.dlpack.to_dlpack(self.value)


@pytest.fixture()
def embedding():
    return np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)


def test_host_and_device_inputs_reach_the_torch_device(embedding):
    placement = Placement("torch", device_type="cpu")
    for tensor in (HostTensor(embedding), DeviceTensor(torch.from_numpy(embedding.copy()))):
        value = placement.array(tensor)
        assert isinstance(value, torch.Tensor) and value.device == placement.device
        np.testing.assert_array_equal(value.numpy(), embedding)


def test_k_is_read_as_a_host_array_from_either_memory():
    k = np.array([[10], [10]], dtype=np.int32)
    for placement in (Placement("torch", device_type="cpu"), Placement("numpy")):
        np.testing.assert_array_equal(placement.host(HostTensor(k)), k)
    np.testing.assert_array_equal(Placement("torch", device_type="cpu").host(DeviceTensor(torch.from_numpy(k))), k)


def test_numpy_placement_reads_host_inputs_without_dlpack(embedding):
    np.testing.assert_array_equal(Placement("numpy").array(HostTensor(embedding)), embedding)


def test_each_instance_uses_the_gpu_triton_gave_it():
    placement = Placement.for_instance({"model_instance_kind": "GPU", "model_instance_device_id": "3"}, "torch")
    assert placement.device == torch.device("cuda", 3) and placement.device_id == 3
    assert Placement.for_instance({"model_instance_kind": "CPU", "model_instance_device_id": "0"}, "numpy").library == "numpy"
    with pytest.raises(ValueError, match=r"implementation on torch needs a KIND_GPU instance; this one is CPU"):
        Placement.for_instance({"model_instance_kind": "CPU"}, "torch")
    with pytest.raises(ValueError, match=r"library must be one of"):
        Placement("jax")


@pytest.mark.gpu
def test_cupy_placement_takes_host_k_and_copies_host_embeddings_to_its_gpu(embedding):
    import cupy

    placement = Placement("cupy", device_id=0)
    value = placement.array(HostTensor(embedding))
    assert isinstance(value, cupy.ndarray) and value.device.id == 0
    np.testing.assert_array_equal(cupy.asnumpy(value), embedding)
    assert placement.host(HostTensor(np.array([[5]], dtype=np.int32))).tolist() == [[5]]
