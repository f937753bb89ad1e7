"""run_batch's two schedules: results in input order, one bad file (read, compute or write) never loses the others."""
import numpy as np
import pytest
import tifffile

from cellflow_rt import batch
from cellflow_rt.batch import OutputOptions, run_batch
from cellflow_rt.examples import example_image_path
from cellflow_rt.loaded_model import LoadedModel
from cellflow_rt.settings import EvalSettings

SETTINGS = EvalSettings(channels=(0, 0), diameter=17.0)


@pytest.fixture(scope="module")
def model():
    return LoadedModel.load("nuclei_demo", providers="cpu", num_threads=1)


@pytest.fixture
def folder(tmp_path):
    image = tifffile.imread(example_image_path())[:96, :96]
    paths = []
    for i in range(5):
        path = tmp_path / f"img{i}.tif"
        tifffile.imwrite(path, np.roll(image, 11 * i, axis=1))
        paths.append(path)
    (tmp_path / "img2.tif").write_bytes(b"not a tiff")  # unreadable
    return paths


def _run(paths, model, **kwargs):
    order = []
    results = run_batch(paths, model, SETTINGS, OutputOptions(save_npy=False, save_tif=True),
                        on_result=lambda i, r: order.append(i), **kwargs)
    return results, order


@pytest.mark.parametrize("streaming", [False, True])
def test_results_in_input_order_and_a_bad_file_stays_alone(folder, model, streaming):
    results, order = _run(folder, model, streaming=streaming)
    assert order == list(range(5))
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert results[2].error.startswith("ImageReadError")
    for i in (0, 1, 3, 4):
        masks = tifffile.imread(results[i].outputs[0])
        assert results[i].n_masks == len(np.unique(masks)) - 1 > 0


def test_streaming_writes_the_same_masks_as_the_cpu_schedule(folder, model, tmp_path):
    cpu, _ = _run(folder, model, streaming=False)
    cpu_masks = [tifffile.imread(r.outputs[0]) for r in cpu if r.ok]
    streamed, _ = _run(folder, model, streaming=True)
    for expected, result in zip(cpu_masks, [r for r in streamed if r.ok]):
        np.testing.assert_array_equal(tifffile.imread(result.outputs[0]), expected)


def test_streaming_isolates_compute_and_write_failures_and_skips(folder, model, monkeypatch):
    compute, write = batch._compute, batch._write

    def failing_compute(image, x, *args):
        if x.shape[1] == 96 and np.array_equal(image, tifffile.imread(folder[1])):
            raise RuntimeError("device lost")
        return compute(image, x, *args)

    def failing_write(path, *args):
        if path.name == "img3.tif":
            raise OSError("disk full")
        return write(path, *args)

    monkeypatch.setattr(batch, "_compute", failing_compute)
    monkeypatch.setattr(batch, "_write", failing_write)
    _run(folder[:1], model, streaming=True)  # img0's outputs exist: skipped below
    order = []
    results = run_batch(folder, model, SETTINGS, OutputOptions(save_npy=False, save_tif=True), skip_existing=True,
                        on_result=lambda i, r: order.append(i), streaming=True)
    assert order == list(range(5))
    assert results[0].skipped
    assert results[1].error == "RuntimeError: device lost"
    assert not results[2].ok
    assert results[3].error == "OSError: disk full"
    assert results[4].ok and results[4].n_masks > 0
