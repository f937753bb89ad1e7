"""Reference side of bench.py: Cellpose 3.1.1.1 on one case, stage by stage. Runs in the reference env.

Usage (bench.py starts it; by hand only to debug)::

    /tmp/cpref/bin/python bench/reference_worker.py SPEC.json

``SPEC.json`` (written by bench.py): ``case`` (a bench._common.Case as a dict), ``image``,
``weights`` (checkpoint path), ``repeats``, ``threads``, ``outdir`` (scratch folder for outputs),
``masks_out`` (.npy of the last run's masks), ``result`` (JSON written here).

Cellpose's own functions are wrapped (timed, results untouched) where ``CellposeModel.eval`` looks
them up: ``transforms.convert_image`` / ``normalize_img`` (preprocess), ``CellposeModel._run_net``
(network: resize, ``core.run_net``, resize back), ``core._forward`` (net forward only),
``CellposeModel._compute_masks`` (masks), ``dynamics.follow_flows`` (Euler),
``dynamics.get_masks_torch`` (clustering), ``dynamics.remove_bad_flow_masks`` (flow QC),
``utils.fill_holes_and_remove_small_masks`` (fill), ``utils.stitch3D`` (stitch) and
``plot.dx_to_circ`` (the flow picture ``eval`` returns for the GUI file: counted as outputs).
Run 0 is the first call of the process (torch initialisation); runs 1.. are the repeats.
"""
import json
import sys
import time
from pathlib import Path

tic_import = time.perf_counter()
import numpy as np  # noqa: E402
import torch  # noqa: E402
from cellpose import core, dynamics, io, models, plot, transforms, utils  # noqa: E402
import_seconds = time.perf_counter() - tic_import

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StageClock, case_from_dict, peak_rss_mib, write_json  # noqa: E402


def install_clock(clock: StageClock) -> None:
    clock.wrap(transforms, "convert_image", "preprocess")
    clock.wrap(transforms, "normalize_img", "preprocess")
    clock.wrap(models.CellposeModel, "_run_net", "network")
    clock.wrap(core, "_forward", "forward")
    clock.wrap(models.CellposeModel, "_compute_masks", "masks")
    clock.wrap(dynamics, "follow_flows", "euler")
    clock.wrap(dynamics, "get_masks_torch", "clustering")
    clock.wrap(dynamics, "remove_bad_flow_masks", "flow_qc")
    clock.wrap(utils, "fill_holes_and_remove_small_masks", "fill")
    clock.wrap(utils, "stitch3D", "stitch")
    clock.wrap(plot, "dx_to_circ", "outputs")


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    case = case_from_dict(spec["case"])
    threads = int(spec.get("threads") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    clock = StageClock()
    install_clock(clock)

    tic = time.perf_counter()
    model = models.CellposeModel(gpu=False, pretrained_model=spec["weights"])
    load_seconds = time.perf_counter() - tic

    outdir = Path(spec["outdir"])
    outdir.mkdir(parents=True, exist_ok=True)
    out_name = str(outdir / Path(spec["image"]).name)  # outputs named after the image, in outdir
    kw = dict(case.eval)
    runs, masks = [], None
    for _ in range(1 + int(spec["repeats"])):
        clock.reset()
        with clock.time("total"):
            with clock.time("read"):
                img = io.imread(spec["image"])
            masks, flows, _styles = model.eval(img, **kw)
            with clock.time("outputs"):
                io.masks_flows_to_seg(img, masks, flows, out_name, diams=kw.get("diameter", 30.0),
                                      channels=kw.get("channels"))
                io.save_masks(img, masks, flows, out_name, png=False, tif=True, savedir=str(outdir))
        runs.append(clock.record())
    np.save(spec["masks_out"], np.asarray(masks))
    write_json(spec["result"], {
        "side": "reference",
        "versions": {"cellpose": _cellpose_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0]},
        "threads": torch.get_num_threads(),
        "import_s": import_seconds,
        "load_s": load_seconds,
        "runs": runs,
        "n_masks": int(len(np.unique(masks)) - 1),
        "peak_rss_mib": peak_rss_mib(),
    })


def _cellpose_version() -> str:
    from importlib.metadata import version
    return version("cellpose")


if __name__ == "__main__":
    main(sys.argv[1])
