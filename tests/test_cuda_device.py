"""An onnxruntime-gpu build on a machine without a GPU (the CUDA image run without ``--gpus``).

The GPU providers are listed by such a build, so the fallback to the CPU cannot rely on the build's
provider list: :mod:`cellflow_rt.cuda_device` asks the driver. Here (no NVIDIA driver) the probe is
real and the onnxruntime-gpu build is stood in for by its provider list; ``docker/test-image.sh``
checks the same through ``cellflow-rt run --use_gpu`` in the real CUDA image.
"""
from __future__ import annotations

import warnings

import pytest

from cellflow_rt import network
from cellflow_rt.cuda_device import cuda_devices

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

pytestmark = pytest.mark.skipif(cuda_devices()[0] > 0, reason="this machine has a CUDA device")


@pytest.fixture
def gpu_build(monkeypatch):
    monkeypatch.setattr(network, "available_providers", lambda: list(GPU_BUILD))


def test_the_driver_probe_says_why_there_is_no_device():
    count, reason = cuda_devices()
    assert count == 0
    assert "libcuda.so.1" in reason or "NVIDIA driver" in reason, reason


def test_use_gpu_falls_back_to_the_cpu_with_one_line(gpu_build):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = network.choose_providers(["tensorrt", "cuda"])
    assert chosen == ["CPUExecutionProvider"]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message and "cannot run here" in message and cuda_devices()[1] in message
    assert message.endswith("falling back to CPUExecutionProvider")


def test_a_strict_gpu_request_fails_with_the_reason(gpu_build):
    with pytest.raises(network.ProviderUnavailableError, match="cannot run here: .*NVIDIA driver"):
        network.choose_providers("cuda", strict=True)


def test_the_default_choice_is_the_cpu_without_a_warning(gpu_build):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert network.choose_providers(None) == ["CPUExecutionProvider"]


def test_a_provider_missing_from_the_build_is_still_named_so(monkeypatch):
    monkeypatch.setattr(network, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(network.ProviderUnavailableError, match="not available in this onnxruntime build"):
        network.choose_providers("tensorrt", strict=True)
