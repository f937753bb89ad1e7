"""An acquisition loop that segments each new frame through ``cellflow-rt serve``.

Start the service once (it keeps the model loaded), then run the loop::

    cellflow-rt serve --model nuclei_demo &
    python examples/acquisition_loop.py --frames 20                 # simulated microscope frames
    python examples/acquisition_loop.py --watch /data/run1 --save masks/   # frames a microscope writes

Without ``--watch`` the "microscope" is the bundled example image, shifted and with fresh noise on
every frame. With ``--watch DIR`` each new ``.tif``/``.png`` file in DIR is sent as it appears (the
file's own bytes: the service reads the format) and, with ``--save``, its label image is written
beside the others. Each frame prints one line: cells found and the time the service took.
Non-Python software does the same with one HTTP request per frame (see the curl example in docs/serve.md).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cellflow_rt.client import Client, ServiceError


def simulated_frames(n: int):
    """The bundled example image, drifting a few pixels per frame, with fresh shot noise."""
    import numpy as np

    from cellflow_rt.examples import example_image_path
    from cellflow_rt.io import imread

    base = imread(example_image_path()).astype(np.float32)
    rng = np.random.default_rng(0)
    for i in range(n):
        frame = np.roll(base, (3 * i, 2 * i), axis=(0, 1))
        yield f"frame_{i:04d}", rng.poisson(frame).clip(0, 255).astype(np.uint8)


def watched_files(folder: Path, n: int, poll: float = 0.2):
    """New image files in ``folder`` as they appear (a file is taken once its size stops changing)."""
    seen, count = set(), 0
    while n <= 0 or count < n:
        for path in sorted(folder.glob("*")):
            if path in seen or path.suffix.lower() not in (".tif", ".tiff", ".png"):
                continue
            size = path.stat().st_size
            time.sleep(poll)
            if path.stat().st_size != size:
                continue  # still being written
            seen.add(path)
            count += 1
            yield path
        time.sleep(poll)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8765", help="the service's address")
    parser.add_argument("--token", default=None, help="bearer token (default: $CELLFLOW_RT_TOKEN)")
    parser.add_argument("--frames", type=int, default=10, help="frames to segment (0 with --watch: forever)")
    parser.add_argument("--watch", type=Path, default=None, help="segment new image files appearing in this folder")
    parser.add_argument("--save", type=Path, default=None, help="write <name>_cp_masks.tif here (with --watch)")
    parser.add_argument("--model", default="nuclei_demo")
    parser.add_argument("--diameter", type=float, default=17.0)
    args = parser.parse_args(argv)

    client = Client(args.url, token=args.token)
    try:
        print(f"service: {client.health()['status']}, models {client.health()['models']}")
    except ServiceError as exc:
        print(f"cannot use the service: {exc}", file=sys.stderr)
        return 1
    settings = {"model": args.model, "diameter": args.diameter}
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
    frames = (((p.stem, p) for p in watched_files(args.watch, args.frames)) if args.watch
              else simulated_frames(args.frames))
    for name, frame in frames:
        tic = time.perf_counter()
        try:
            if isinstance(frame, Path):
                result = client.segment_file(frame, **settings)
            else:
                result = client.segment(frame, **settings)
        except ServiceError as exc:  # a bad frame must not stop the acquisition
            print(f"frame {name}: FAILED: {exc}", file=sys.stderr)
            continue
        seconds = time.perf_counter() - tic
        print(f"frame {name}: {result.n_masks} cells, {seconds * 1000:.0f} ms "
              f"(network {result.timings['network'] * 1000:.0f} ms)")
        if args.save and isinstance(frame, Path):
            import tifffile
            tifffile.imwrite(args.save / f"{name}_cp_masks.tif", result.masks, compression="zlib")
    return 0


if __name__ == "__main__":
    sys.exit(main())
