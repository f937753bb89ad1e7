"""Compile every GPU kernel for a GPU architecture, without a GPU, and check the rounding.

    python bench/gpu/ptx_check.py [--cc 9.0]

Needs numba-cuda, CUDA 13's NVRTC (``nvidia-cuda-nvrtc``, in the ``test`` extra) and libNVVM (a
CUDA 13 toolkit, as on this project's machines, or ``nvidia-nvvm``); no GPU and no driver. Each
kernel of ``cellflow_rt.gpu`` (the dynamics kernels and the device-resident chain's: tiles, resize,
labels) is compiled by numba-cuda's real CUDA target with
the argument types the GPU path gives it (the simulator checks the logic, not numba's typing), and
the PTX of the kernels whose arithmetic must be the CPU path's is checked for what could change a
rounding: no ``fma`` instruction, and no plain (contractible) float multiply except by a power of
two (exact, so contracting it changes nothing). Every kernel's line gives its ``fma`` count.
Exit status: 0 all good, 1 a kernel failed, 3 no NVRTC or libNVVM here.
"""
import argparse
import os
import re
import sys
from pathlib import Path

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"  # the real CUDA target, before numba.cuda is imported
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

#: kernels whose float arithmetic must round like the CPU path's (the tile blend and the bilinear
#: resize included: their sums are the CPU's bit for bit, see cellflow_rt.gpu.tiles and .resize)
EXACT = {"masked_flow_3d", "euler_2d", "euler_3d", "mask_errors", "_accumulate_kernel", "_normalise_crop_kernel",
         "_bilinear_hwc_kernel", "_bilinear_chw_kernel"}


def signatures():
    from numba import types as T

    from cellflow_rt.gpu import _clusters, _euler, _fill, _flow_check, _labels, _scan, resize, tiles
    f32, f64, i64, i32, u8, b1 = T.float32, T.float64, T.int64, T.int32, T.uint8, T.boolean

    def C(dt, nd):
        return T.Array(dt, nd, "C")

    def A(dt, nd):  # any strides: the caller's device arrays
        return T.Array(dt, nd, "A")

    return [
        (_euler.masked_flow_2d, (A(f32, 3), A(f32, 2), f32, C(f32, 2), C(u8, 1))),
        (_euler.masked_flow_2d, (A(f32, 3), A(f64, 2), f64, C(f32, 2), C(u8, 1))),
        (_euler.masked_flow_3d, (A(f32, 4), A(f32, 3), f32, b1, C(f32, 2), C(u8, 1))),
        (_euler.euler_2d, (C(f32, 2), i64, i64, C(i64, 1), C(i64, 1), i64, b1, C(i64, 1), C(i32, 1))),
        (_euler.euler_3d, (b1, C(f32, 2), i64, i64, i64, C(i64, 1), C(i64, 1), i64, C(i64, 1), C(i32, 1))),
        (_clusters.seed_flags, (C(i32, 1), i64, i64, i64, C(u8, 1))),
        (_clusters.gather_counts, (C(i32, 1), C(i64, 1), i64, C(i32, 1))),
        (_clusters.grow_and_paint_2d, (C(i32, 1), i64, i64, i64, C(i64, 1), i64, C(i32, 1), C(i32, 1))),
        (_clusters.grow_and_paint_3d, (C(i32, 1), i64, i64, i64, C(i64, 1), i64, C(i32, 1), C(i32, 1))),
        (_clusters.label_points, (C(i32, 1), C(i64, 1), i64, C(i32, 1), C(i64, 1), C(i64, 1))),
        (_clusters.first_of_kept, (C(i32, 1), i64, C(i64, 1), C(i64, 1), f64, C(u8, 1))),
        (_clusters.number_labels, (C(i64, 1), C(i64, 1), C(i32, 1), C(i32, 1))),
        (_clusters.write_labels, (C(i64, 1), i64, C(i32, 1), C(i32, 1), C(i32, 1))),
        (_flow_check.mask_stats, (C(i32, 2),) + (C(i64, 1),) * 7),
        (_flow_check.box_areas, (C(i64, 1),) * 4 + (i64, C(i64, 1))),
        (_flow_check.mask_errors, (C(i32, 2), A(f32, 3), i64) + (C(i64, 1),) * 8
         + (C(f64, 1), C(f64, 1), C(u8, 1), C(f64, 1))),
        (_flow_check.drop_bad_masks, (C(i32, 2), C(f64, 1), f64, C(i64, 1))),
        (_fill.label_boxes, (C(i32, 3), C(i64, 2), C(i64, 2), C(i64, 1))),
        (_fill.kept_labels, (C(i64, 1), i64, i64, C(u8, 1))),
        (_fill.plane_areas, (C(i64, 2), C(i64, 2), C(u8, 1), i64, C(i64, 1))),
        (_fill.number_kept, (C(i64, 1), C(i64, 1), C(i32, 1))),
        (_fill.fill_boxes, (C(i32, 3), i64, C(i64, 2), C(i64, 2), C(i32, 1), C(i64, 1), C(u8, 1), C(i32, 3),
                            C(i64, 1))),
        (_labels.fill, (C(i64, 1), i64)),
        (_labels.gather_2d, (C(i32, 2), C(i64, 1), C(i64, 1), C(i32, 2))),
        (_labels.gather_3d, (C(i32, 3), C(i64, 1), C(i64, 1), C(i64, 1), C(i32, 3))),
        (_labels.cast, (C(i32, 1), C(T.uint16, 1))),
        (_scan._count_chunks, (C(u8, 1), i64, i64, C(i64, 1))),
        (_scan._sum_chunks, (C(i64, 1), i64, i64, C(i64, 1))),
        (_scan._scan_chunks, (C(i64, 1), i64, i64, C(i64, 1))),
        (_scan._scan_one_thread, (C(i64, 1), i64, C(i64, 1))),
        (_scan._scatter_flagged, (C(u8, 1), i64, i64, C(i64, 1), C(i64, 1))),
        # the device-resident chain (gpu.flows, gpu.predict): tiles in, blend out, resizes
        (tiles._extract_kernel, (A(f32, 3), i64, i64, C(i64, 1), C(i64, 1), i64, b1, A(f32, 4))),
        (tiles._accumulate_kernel, (A(f32, 4), i64, C(i64, 1), C(i64, 1), C(f64, 2), b1, i64, i64, A(f32, 3),
                                    A(f64, 2))),
        (tiles._normalise_crop_kernel, (A(f32, 3), A(f64, 2), i64, i64, A(f32, 3))),
        (tiles._fill_kernel, (C(f32, 1), f32)),
        (tiles._fill_kernel, (C(f64, 1), f64)),
        (resize._bilinear_hwc_kernel, (A(f32, 3), C(i64, 1), C(f32, 1), C(i64, 1), C(f32, 1), A(f32, 3))),
        (resize._bilinear_chw_kernel, (A(f32, 3), C(i64, 1), C(f32, 1), C(i64, 1), C(f32, 1), A(f32, 3))),
    ]


_PLAIN_MUL = re.compile(r"\bmul\.f(?:32|64)\s+%\w+,\s*%\w+,\s*(\S+);")
_POWERS_OF_TWO = {"0f3F000000", "0f40000000", "0f3F800000", "0d3FE0000000000000", "0d4000000000000000"}


def uncovered_kernels(checked) -> list:
    """Kernels (not device functions) of ``cellflow_rt.gpu`` that :func:`signatures` leaves out."""
    import importlib
    import pkgutil

    from numba.cuda.dispatcher import CUDADispatcher

    import cellflow_rt.gpu as gpu

    found = set()
    for info in pkgutil.iter_modules(gpu.__path__):
        module = importlib.import_module(f"cellflow_rt.gpu.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, CUDADispatcher) and not obj.targetoptions.get("device")
                    and obj.py_func.__module__ == module.__name__):
                found.add(f"{module.__name__}.{obj.py_func.__name__}")
    return sorted(found - {f"{k.py_func.__module__}.{k.py_func.__name__}" for k in checked})


def fma_count(ptx: str) -> int:
    """Number of fused multiply-add instructions (``fma.*``) in a PTX listing."""
    return sum(1 for line in ptx.splitlines() if re.search(r"\bfma\.", line))


def rounding_problems(ptx: str):
    """Instructions that could round differently from the CPU: FMAs, inexact plain multiplies."""
    problems = [line.strip() for line in ptx.splitlines() if re.search(r"\bfma\.", line)]
    problems += [m.group(0) for m in _PLAIN_MUL.finditer(ptx) if m.group(1) not in _POWERS_OF_TWO]
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cc", default="9.0", help="compute capability to compile for (default 9.0: H100/H200)")
    args = parser.parse_args(argv)
    cc = tuple(int(v) for v in args.cc.split("."))
    import numba.cuda.dispatcher as dispatcher
    from numba import types
    from numba.cuda import compile_ptx

    def probe(a):
        a[0] = 1.0

    try:
        compile_ptx(probe, (types.float32[::1],), cc=cc)
    except Exception as exc:  # noqa: BLE001 - a missing libNVVM / NVRTC shows up in several ways
        print(f"cannot compile CUDA here ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
              "install nvidia-cuda-nvrtc (CUDA 13; the test extra) and a CUDA 13 toolkit or nvidia-nvvm", file=sys.stderr)
        return 3

    class _Target:  # device functions ask the current device for its compute capability
        compute_capability = cc

    dispatcher.get_current_device = lambda: _Target()
    failures = 0
    for kernel, sig in signatures():
        name = kernel.py_func.__name__
        try:
            ptx, _ = compile_ptx(kernel.py_func, sig, cc=cc)
        except Exception as exc:  # noqa: BLE001
            failures += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}")
            continue
        problems = rounding_problems(ptx) if name in EXACT else []
        failures += bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {name:22s} {len(ptx) // 1024:4d} KB PTX  {fma_count(ptx)} fma"
              + ("  exact" if name in EXACT else "") + (f"  rounding: {problems[:3]}" if problems else ""))
    missing = uncovered_kernels(kernel for kernel, _ in signatures())
    for name in missing:  # a new kernel must be added to signatures() to be checked
        failures += 1
        print(f"FAIL {name}: not compiled by this check (add it to signatures())")
    print(f"{failures} failure(s), compute capability {args.cc}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
