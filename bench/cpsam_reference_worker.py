"""Cellpose 4.2.1.1 side of bench_cpsam.py (runs in the Cellpose 4 environment, never in the project's).

Usage (bench_cpsam.py starts it)::

    /work/ref/cp4/bin/python bench/cpsam_reference_worker.py SPEC.json

``SPEC.json``: ``mode`` ("tile", "image", "startup" or "cases"), ``weights`` (a CPSAM checkpoint),
``bfloat16`` (Cellpose 4's default precision, or float32), ``threads``, ``repeats``, ``result``
(JSON written here) and per mode: ``tile`` (.npy of one 3 x 256 x 256 tile), ``image`` (.tif) and
``masks_out`` (.npy), or ``cases`` (reference case folders) and ``outdir`` (masks per case). "cases"
builds the demo's small encoder the way ``shared/tools/make_reference_cpsam.py`` does.
torchvision does not import with this torch; ``shared/tools/train_cpsam_tiny.py`` stubs it.
"""
import json
import resource
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "shared" / "tools"
sys.path.insert(0, str(TOOLS))
from train_cpsam_tiny import stub_torchvision, tiny_registry  # noqa: E402

_TIC = time.perf_counter()
stub_torchvision()
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402

#: Seconds spent importing torch and numpy at the top of this module (part of --startup's import time).
IMPORT_S = time.perf_counter() - _TIC


def peak_rss_mib() -> float:
    """Peak RSS since exec (VmHWM; ru_maxrss would include the parent's peak at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def startup(spec: dict) -> dict:
    """Import Cellpose, load the model, segment the image, save the masks (what ``--startup`` times)."""
    tic = time.perf_counter()
    from cellpose import models
    imported = time.perf_counter()
    model = models.CellposeModel(gpu=False, pretrained_model=spec["weights"], use_bfloat16=spec["bfloat16"])
    loaded = time.perf_counter()
    masks = model.eval(tifffile.imread(spec["image"]))[0]
    np.save(spec["masks_out"], masks)
    done = time.perf_counter()
    return {"import_s": imported - tic + IMPORT_S, "load_s": loaded - imported, "eval_s": done - loaded,
            "n_masks": int(masks.max()), "peak_rss_mib": peak_rss_mib(), "torch": torch.__version__}


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec["mode"] == "startup":
        torch.set_num_threads(int(spec["threads"]))
        Path(spec["result"]).write_text(json.dumps(startup(spec), indent=1))
        return
    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    if spec["mode"] == "cases":
        import cellpose.vit as cv
        cv.sam_model_registry = tiny_registry()
    from cellpose import models

    tic = time.perf_counter()
    model = models.CellposeModel(gpu=False, pretrained_model=spec["weights"], use_bfloat16=spec["bfloat16"])
    result = {"load_s": time.perf_counter() - tic, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "dtype": str(model.net.dtype)}
    if spec["mode"] == "tile":
        tile = torch.from_numpy(np.load(spec["tile"])).to(model.net.dtype)
        model.net.eval()
        seconds = []
        with torch.no_grad():
            for _ in range(1 + int(spec["repeats"])):
                tic = time.perf_counter()
                out = model.net(tile)[0]
                seconds.append(time.perf_counter() - tic)
        np.save(spec["masks_out"], out.float().numpy())
        result.update(first_s=seconds[0], seconds=seconds[1:])
    elif spec["mode"] == "image":
        image = tifffile.imread(spec["image"])
        seconds = []
        for _ in range(int(spec["repeats"])):
            tic = time.perf_counter()
            masks = model.eval(image)[0]
            seconds.append(time.perf_counter() - tic)
        np.save(spec["masks_out"], masks)
        result.update(seconds=seconds, n_masks=int(masks.max()))
    else:
        out = Path(spec["outdir"])
        out.mkdir(parents=True, exist_ok=True)
        for folder in map(Path, spec["cases"]):
            kwargs = json.loads((folder / "params.json").read_text())["eval"]
            masks = model.eval(tifffile.imread(folder / "image.tif"), **kwargs)[0]
            np.save(out / f"{folder.name}.npy", masks)
    result["peak_rss_mib"] = peak_rss_mib()
    Path(spec["result"]).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
