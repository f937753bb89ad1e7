"""The device-resident network half (gpu/flows.py, gpu/predict.py) against the host pipeline.

Numba's CUDA simulator runs the kernels and the CPU provider stands in for the network (its batches
go through the host), so the device path must give the host path's flows, cell probability and
styles bit for bit. Small tiles (bsize 32) and small images keep the simulator quick.
"""
import types

import numpy as np
import pytest
import tifffile

from cellflow_rt import pipeline
from cellflow_rt.examples import example_image_path
from cellflow_rt.gpu.predict import predict_on_device, prediction_to_host
from cellflow_rt.loaded_model import LoadedModel
from cellflow_rt.network import Network
from cellflow_rt.settings import EvalSettings


@pytest.fixture(scope="module")
def model():
    return LoadedModel.load("nuclei_demo", providers="cpu", num_threads=1)


@pytest.fixture(scope="module")
def image():
    return tifffile.imread(example_image_path())[40:64, 50:80]


def _both_paths(image, model, settings):
    host = pipeline.predict(image, model, settings)
    x = pipeline.prepare_image(image, settings, model.nchan)
    device = predict_on_device(x, model, settings, pipeline.rescale_for(model, settings), host.diameter)
    return host, device


def _assert_same(host, device):
    moved = prediction_to_host(device)
    assert moved.dP.shape == host.dP.shape and moved.cellprob.shape == host.cellprob.shape
    np.testing.assert_array_equal(moved.dP, host.dP)
    np.testing.assert_array_equal(moved.cellprob, host.cellprob)
    np.testing.assert_array_equal(device.styles, host.styles)
    assert device.shape == host.shape


def test_one_plane_resized_tiled_in_batches_and_resized_back(model, image):
    # rescale 17/20: resized on the way in and back; 9 tiles in batches of 4 (a plane split across runs)
    settings = EvalSettings(channels=(0, 0), diameter=20.0, bsize=32, batch_size=4)
    host, device = _both_paths(image, model, settings)
    assert not isinstance(device.dP, np.ndarray)  # left on the device
    _assert_same(host, device)


def test_stack_of_planes_with_augment_several_planes_per_run(model, image):
    stack = np.stack([image, image[::-1]])
    settings = EvalSettings(channels=(0, 0), z_axis=0, stitch_threshold=0.5, diameter=25.0, bsize=32,
                            batch_size=16, augment=True, resample=False)
    host, device = _both_paths(stack, model, settings)
    assert device.cellprob.shape[0] == 2
    _assert_same(host, device)


def test_masks_from_the_device_prediction_equal_the_host_pipelines(model, image):
    settings = EvalSettings(channels=(0, 0), diameter=17.0, bsize=32)
    host, device = _both_paths(image, model, settings)
    np.testing.assert_array_equal(pipeline.finish(prediction_to_host(device)).masks, pipeline.finish(host).masks)


class _FakeDeviceArray:
    def __init__(self, shape, pointer, typestr="<f4", strides=None):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (pointer, False),
                                         "strides": strides, "version": 3}


class _RecordingSession:
    def __init__(self):
        self.bound, self.runs = [], 0

    def io_binding(self):
        session = self

        class Binding:
            def bind_input(self, *args):
                session.bound.append(("input",) + args)

            def bind_output(self, *args):
                session.bound.append(("output",) + args)
        return Binding()

    def run_with_iobinding(self, binding):
        self.runs += 1


def test_run_on_device_binds_the_device_pointers_without_copies(model):
    """Fakes only: no CUDA or TensorRT session can be made without a GPU, so a recording session and
    objects carrying a ``__cuda_array_interface__`` stand in; this checks what is bound, not that ONNX
    Runtime reads and writes those pointers. The real binding runs in the prepared GPU check
    (``bench/gpu/chain_check.py``, step ``iobinding``: CUDA provider, numba device arrays, outputs
    against ``Network.run``) when a GPU is lent."""
    net = Network(model.info.onnx_path, providers="cpu", num_threads=1)
    with pytest.raises(RuntimeError, match="CUDA or TensorRT"):
        net.run_on_device(None, None, None)
    net.on_gpu, net.session = True, _RecordingSession()  # as a CUDA session would be
    net.run_on_device(_FakeDeviceArray((4, 2, 224, 224), 1000), _FakeDeviceArray((4, 3, 224, 224), 2000),
                      _FakeDeviceArray((4, 256), 3000))
    assert net.session.runs == 1
    assert net.session.bound == [
        ("input", "image", "cuda", 0, np.float32, [4, 2, 224, 224], 1000),
        ("output", "flows", "cuda", 0, np.float32, [4, 3, 224, 224], 2000),
        ("output", "style", "cuda", 0, np.float32, [4, 256], 3000)]


@pytest.mark.parametrize("bad, message", [(np.zeros((1, 2, 8, 8), np.float32), "__cuda_array_interface__"),
                                          (_FakeDeviceArray((1, 2, 8, 8), 8, typestr="<f8"), "float32"),
                                          (_FakeDeviceArray((1, 2, 8, 8), 8, strides=(4, 4, 4, 4)), "C-contiguous")])
def test_run_on_device_refuses_what_it_cannot_bind(model, bad, message):
    # fakes, as above: the checks happen before anything reaches ONNX Runtime
    net = Network(model.info.onnx_path, providers="cpu", num_threads=1)
    net.on_gpu, net.session = True, _RecordingSession()
    good = _FakeDeviceArray((1, 3, 8, 8), 16)
    with pytest.raises((TypeError, ValueError), match=message):
        net.run_on_device(bad, good, _FakeDeviceArray((1, 256), 32))
    assert net.session.runs == 0


def test_device_path_is_chosen_for_a_gpu_network_with_gpu_dynamics(model):
    gpu_model = types.SimpleNamespace(net=types.SimpleNamespace(on_gpu=True, providers=("CUDAExecutionProvider",)))
    gpu_dynamics = types.SimpleNamespace(do_3D=False, dynamics="gpu")
    assert pipeline.device_resident(gpu_model, gpu_dynamics)  # the simulator counts as a CUDA device
    assert not pipeline.device_resident(model, gpu_dynamics)  # the network runs on the CPU
    assert not pipeline.device_resident(gpu_model, types.SimpleNamespace(do_3D=False, dynamics="cpu"))
    assert not pipeline.device_resident(gpu_model, types.SimpleNamespace(do_3D=True, dynamics="gpu"))
    assert pipeline.device_resident(gpu_model, types.SimpleNamespace(do_3D=False, dynamics="auto"))


def test_the_device_buffers_go_with_their_network(model):
    import gc

    from cellflow_rt.gpu.flows import _RUNNERS, device_flows

    net = Network(model.info.onnx_path, providers="cpu", num_threads=1)
    device_flows(net)
    assert net in _RUNNERS
    count = len(_RUNNERS)
    del net
    gc.collect()
    assert len(_RUNNERS) == count - 1
