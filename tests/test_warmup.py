"""cellflow-rt warmup without a GPU (CI): a clear message and a non-zero exit; the shapes it runs."""
from cellflow_rt import provider_options as po
from cellflow_rt.warmup import warmup_shapes
from cli_helpers import run_cli


def test_warmup_without_a_gpu_says_so_and_fails(tmp_path):
    result = run_cli(["warmup", "--model", "nuclei_demo", "--use_gpu", "--precision", "fp16"], cwd=tmp_path)
    assert result.returncode == 1
    assert "no GPU" in result.stderr and "onnxruntime-gpu" in result.stderr


def test_warmup_needs_the_gpu_flag(tmp_path):
    result = run_cli(["warmup", "--model", "nuclei_demo"], cwd=tmp_path)
    assert result.returncode == 2 and "--use_gpu" in result.stderr


def test_warmup_runs_the_corners_of_the_tensorrt_profile():
    shapes = warmup_shapes(2, 8)
    profile = po.trt_profile_shapes(2, 8)
    as_text = {f"image:{'x'.join(map(str, s))}" for s in shapes}
    assert {profile[0], profile[2]} <= as_text
    assert (1, 2, po.TILE, po.TILE) in shapes


def test_warmup_of_a_fixed_tile_graph_runs_only_that_tile():
    shapes = warmup_shapes(3, 4, tile_sides=(256, 256, 256))
    assert {s[2:] for s in shapes} == {(256, 256)}
    assert {s[0] for s in shapes} == {1, 4}


def test_tensorrt_profile_and_warmup_of_a_changeable_tile_family():
    """CPDINO runs 256 (command line) and 384 (Python API) tiles: both inside the profile, both warmed up."""
    from cellflow_rt.family import FAMILIES

    sides = FAMILIES["cpdino"].tile_profile
    low, usual, high = (int(s.split("x")[-1]) for s in po.trt_profile_shapes(3, 4, sides))
    assert low <= 256 and usual == 384 and high >= 384
    assert {(256, 256), (384, 384)} <= {s[2:] for s in warmup_shapes(3, 4, sides)}
