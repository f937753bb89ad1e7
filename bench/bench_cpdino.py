"""CPDINO (Cellpose 4.2's DINOv3 networks) without torch against Cellpose 4.2.1.1: speed per tile and end to end.

A full-size ViT-B/16 (``cpdino-vitb``) or ViT-L/16 (``cpdino``) CPDINO with random weights from a
seed (Cellpose's key names; published weights are not downloaded) is written once to
``bench/out/cpdino_random_<backbone>.pth`` and converted without torch to ``bench/out/models/``.
Each measurement runs in its own process, rounds interleaving the four runtimes:

- ``cellflow fp32`` (ONNX Runtime) and ``cellflow bf16`` (OpenVINO, warm cache);
- ``cellpose fp32`` (``use_bfloat16=False``) and ``cellpose bf16`` (its default), Cellpose 4.2.1.1 in
  its own environment (``--reference-python``) with dinov3's source on its path (``--dinov3``) and
  torchvision stubbed (tests/tools/make_reference_cpdino.py).

``--tile``: one ``bsize`` x ``bsize`` tile through the network (median of ``--repeats`` after a first
call). ``--image``: a synthetic ``--side`` x ``--side`` image through ``eval`` (default arguments but
``bsize``). Ratios are Cellpose's time over ours (above 1: we are faster).

Examples::

    python bench/bench_cpdino.py --tile --backbone vitb --repeats 3
    python bench/bench_cpdino.py --image --backbone vitl --side 1024 --repeats 1 --bsize 384
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
SIZES = {"vitb": dict(embed_dim=768, depth=12, num_heads=12, mlp_dim=3072, n_storage=4, nout=3),
         "vitl": dict(embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096, n_storage=4, nout=3),
         # make_reference_cpdino.py's tiny DINOv3 (a smoke test of this script, not a benchmark)
         "tiny": dict(embed_dim=64, depth=2, num_heads=4, mlp_dim=256, n_storage=4, nout=3)}
RUNTIMES = ("cellflow fp32", "cellflow bf16", "cellpose fp32", "cellpose bf16")


def thread_env(threads: int) -> dict:
    import os
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[key] = str(threads)
    return env


def model_files(backbone: str) -> tuple:
    """(checkpoint, ONNX) of the random full-size network, made once."""
    checkpoint = OUT / f"cpdino_random_{backbone}.pth"
    onnx_path = OUT / "models" / f"cpdino_random_{backbone}.onnx"
    if not checkpoint.is_file():
        import torch

        from cellflow_rt.convert.specs import CPDINOSpec
        from cellflow_rt.export.cpdino import random_cpdino_state
        OUT.mkdir(parents=True, exist_ok=True)
        torch.save(random_cpdino_state(CPDINOSpec(**SIZES[backbone]), seed=0), checkpoint)
    if not onnx_path.is_file():
        from cellflow_rt.convert import convert_checkpoint
        convert_checkpoint(checkpoint, name=onnx_path.stem, out_dir=onnx_path.parent)
    return checkpoint, onnx_path


def synthetic_image(side: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    image = np.zeros((side, side), np.float32)
    for cy, cx in rng.uniform(0, side, (side * side // 900, 2)):
        image += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 50.0)
    return (image * 1000 + rng.normal(100, 10, image.shape)).clip(0, 65535).astype(np.uint16)


# ------------------------------------------------------------------------------------------ workers
def our_worker(spec: dict) -> dict:
    from cellflow_rt.models import CellposeModel

    model = CellposeModel(pretrained_model=spec["onnx"], precision=spec["precision"], num_threads=spec["threads"])
    data = np.load(spec["input"])
    seconds = []
    for _ in range(1 + spec["repeats"]):
        tic = time.perf_counter()
        if spec["mode"] == "tile":
            model.model.net.run(data)
        else:
            model.eval(data, bsize=spec["bsize"])
        seconds.append(time.perf_counter() - tic)
    return {"first_s": seconds[0], "seconds": seconds[1:]}


def reference_worker(spec: dict) -> dict:
    sys.path[:0] = [spec["dinov3"], str(ROOT / "tests" / "tools")]
    from make_reference_cpdino import stub_torchvision, tiny_dinov3
    stub_torchvision()
    import torch
    torch.set_num_threads(spec["threads"])
    import cellpose.vit as cellpose_vit
    from cellpose import models
    if spec["backbone"] == "tiny":  # cellpose's get_backbone knows widths 1024 and 768 only
        cellpose_vit.dinov3_vitl16 = lambda pretrained=False: tiny_dinov3()
        models.get_backbone = lambda path: "dino_vitl"

    model = models.CellposeModel(gpu=False, pretrained_model=spec["checkpoint"], use_bfloat16=spec["bf16"])
    model.net.eval()
    data = np.load(spec["input"])
    seconds = []
    for _ in range(1 + spec["repeats"]):
        tic = time.perf_counter()
        if spec["mode"] == "tile":
            with torch.no_grad():
                model.net(torch.from_numpy(data).to(model.net.dtype))
        else:
            model.eval(data, bsize=spec["bsize"])
        seconds.append(time.perf_counter() - tic)
    return {"first_s": seconds[0], "seconds": seconds[1:]}


def run_worker(python: str, spec: dict, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        subprocess.run([python, __file__, "--worker", str(path)], check=True, env=thread_env(threads))
        return json.loads(path.with_suffix(".out.json").read_text())


# ------------------------------------------------------------------------------------------ driver
def measure(args) -> dict:
    checkpoint, onnx_path = model_files(args.backbone)
    OUT.mkdir(parents=True, exist_ok=True)
    mode = "tile" if args.tile else "image"
    data_path = OUT / f"cpdino_{mode}_input.npy"
    if mode == "tile":
        np.save(data_path, np.random.default_rng(0).random((1, 3, args.bsize, args.bsize), dtype=np.float32))
    else:
        np.save(data_path, synthetic_image(args.side))
    common = dict(mode=mode, input=str(data_path), repeats=args.repeats, threads=args.threads, bsize=args.bsize,
                  backbone=args.backbone)
    rows = {name: [] for name in RUNTIMES}
    for _ in range(args.rounds):
        for precision in ("fp32", "bf16"):
            result = run_worker(sys.executable, dict(common, side="ours", onnx=str(onnx_path), precision=precision),
                                args.threads)
            rows[f"cellflow {precision}"] += result["seconds"]
        for bf16 in (False, True):
            result = run_worker(args.reference_python, dict(common, side="reference", checkpoint=str(checkpoint),
                                                            bf16=bf16, dinov3=args.dinov3), args.threads)
            rows[f"cellpose {'bf16' if bf16 else 'fp32'}"] += result["seconds"]
    return {name: statistics.median(times) for name, times in rows.items() if times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--tile", action="store_true", help="one tile through the network (default)")
    what.add_argument("--image", action="store_true", help="a synthetic image through eval")
    ap.add_argument("--backbone", choices=sorted(SIZES), default="vitb")
    ap.add_argument("--bsize", type=int, default=384)
    ap.add_argument("--side", type=int, default=1024, help="image side for --image")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference-python", default="/work/venv-cp42/bin/python")
    ap.add_argument("--dinov3", default="/work/dinov3-src", help="facebookresearch/dinov3's source folder")
    ap.add_argument("--json", help="also write the medians here")
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        result = (our_worker if spec["side"] == "ours" else reference_worker)(spec)
        Path(args.worker).with_suffix(".out.json").write_text(json.dumps(result))
        return
    args.tile = args.tile or not args.image
    medians = measure(args)
    label = f"{args.backbone}, {'tile' if args.tile else f'{args.side}^2 image'}, bsize {args.bsize}, " \
            f"{args.threads} threads"
    print(f"CPDINO {label}: median seconds (ratio = Cellpose / ours, same precision)")
    for name, seconds in medians.items():
        print(f"  {name:14s} {seconds:8.3f} s")
    for precision in ("fp32", "bf16"):
        ours, theirs = medians.get(f"cellflow {precision}"), medians.get(f"cellpose {precision}")
        if ours and theirs:
            print(f"  {precision}: Cellpose / ours = {theirs / ours:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": label, "median_s": medians}, indent=1))


if __name__ == "__main__":
    main()
