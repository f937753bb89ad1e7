"""CUDA and TensorRT provider options as data (CI has no GPU): per provider and precision, profiles, cache keys."""
import pytest

from cellflow_rt import provider_options as po
from cellflow_rt.network import Network
from cellflow_rt.registry import resolve_model, sha256_file
from cellflow_rt.tiles import pad_amounts, tile_grid

H200 = po.GpuIdentity("NVIDIA H200", (9, 0))
SHA = "ab" * 32


@pytest.mark.parametrize("precision, tf32", [("fp32", "0"), ("tf32", "1"), ("fp16", "0")])
def test_cuda_options_per_precision(precision, tf32):
    options = po.cuda_options(precision)
    assert options["use_tf32"] == tf32
    assert options["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    assert options["do_copy_in_default_stream"] == "1" and options["device_id"] == "0"


def test_tensorrt_profile_covers_batches_up_to_batch_size_and_every_tile_side():
    options = po.tensorrt_options(SHA, nchan=2, batch_size=8, gpu=H200, create=False)
    assert options["trt_profile_min_shapes"] == "image:1x2x32x32"
    assert options["trt_profile_opt_shapes"] == options["trt_profile_max_shapes"] == "image:8x2x224x224"
    # every tile a plane can produce (2D, small images, do_3D slices of thin stacks) lies in that range
    for L in range(1, 700):
        padded = L + sum(pad_amounts(L))
        for augment in (False, True):
            side = tile_grid(padded, padded, augment=augment).ly
            assert po.MIN_TILE <= side <= po.TILE and side % 16 == 0


def test_engine_cache_is_keyed_by_model_precision_batch_and_gpu(tmp_path):
    def engines(**kw):
        args = dict(model_sha256=SHA, nchan=2, precision="fp32", batch_size=8, gpu=H200, cache_dir=tmp_path)
        args.update(kw)
        return po.tensorrt_options(**args)["trt_engine_cache_path"]

    base = engines()
    assert base == str(tmp_path / "engines" / SHA[:16] / "fp32-b8-NVIDIA-H200-sm90")
    assert engines(precision="tf32") == base  # TensorRT builds the same engine for both
    others = [engines(model_sha256="cd" * 32), engines(precision="fp16"), engines(batch_size=16),
              engines(gpu=po.GpuIdentity("NVIDIA A100-SXM4-80GB", (8, 0)))]
    assert len({base, *others}) == 5
    options = po.tensorrt_options(SHA, 2, gpu=H200, cache_dir=tmp_path)
    assert options["trt_timing_cache_path"] == str(tmp_path / "timing" / "NVIDIA-H200-sm90")  # shared by models
    assert options["trt_engine_cache_enable"] == options["trt_timing_cache_enable"] == "True"
    assert (tmp_path / "timing" / "NVIDIA-H200-sm90").is_dir() and (tmp_path / "engines").is_dir()


@pytest.mark.parametrize("precision, fp16", [("fp32", "False"), ("fp16", "True")])
def test_network_builds_each_providers_options_from_one_place(tmp_path, monkeypatch, precision, fp16):
    monkeypatch.setattr(po, "current_gpu", lambda: H200)
    onnx = resolve_model("nuclei_demo").onnx_path
    net = Network(onnx, providers="cpu", num_threads=1)
    assert net.session_provider_options == {"CPUExecutionProvider": {}}
    trt = net._provider_options(po.TENSORRT, tmp_path, precision, 4, 2)
    assert trt["trt_fp16_enable"] == fp16
    assert trt["trt_profile_max_shapes"] == "image:4x2x224x224"
    assert trt["trt_engine_cache_path"].startswith(str(tmp_path / "engines" / sha256_file(onnx)[:16]))
    assert net._provider_options(po.CUDA, tmp_path, precision, 4, 2) == po.cuda_options(precision)


def test_default_cache_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLFLOW_RT_TRT_CACHE", str(tmp_path))
    assert po.default_cache_dir() == tmp_path
    monkeypatch.delenv("CELLFLOW_RT_TRT_CACHE")
    assert po.default_cache_dir().parts[-2:] == ("cellflow-rt", "trt")


def test_gpu_key_is_file_name_safe():
    assert po.GpuIdentity("NVIDIA GeForce RTX 4090 (laptop)", (8, 9)).key == "NVIDIA-GeForce-RTX-4090-laptop-sm89"


def test_tensorrt_profile_of_a_fixed_tile_graph_is_that_tile_at_every_batch():
    # Cellpose-SAM graphs take 256 x 256 tiles only: a profile reaching 32 x 32 would not build
    options = po.tensorrt_options(SHA, nchan=3, batch_size=4, gpu=H200, create=False, tile_sides=(256, 256, 256))
    assert options["trt_profile_min_shapes"] == "image:1x3x256x256"
    assert options["trt_profile_opt_shapes"] == options["trt_profile_max_shapes"] == "image:4x3x256x256"
