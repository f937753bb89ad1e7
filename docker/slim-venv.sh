#!/bin/sh
# Slim an installed virtual environment for a runtime image (used by the Dockerfile's builder
# stages): no pip/setuptools/wheel, no test suites, no C/C++/Cython sources or headers (except the
# CUDA ones compiled at run time), no type stubs, shared objects stripped of their symbols.
# Python bytecode stays here (warm-cache.py --prune-bytecode later keeps the bytecode of the modules
# a run imports: the runtime user cannot write it, and compiling those at every start costs ~1.5 s).
#
# Usage: slim-venv.sh VENV          (needs strip(1) and readelf(1) from binutils)
set -eu
venv=$1
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# installers: nothing is installed at run time (pip removes itself last)
"$venv/bin/python" -m pip uninstall -q -y setuptools wheel pip 2>/dev/null || true
rm -f "$venv"/bin/pip "$venv"/bin/pip3*

# test suites of the dependencies (numpy, scipy, numba, llvmlite ...): never imported at run time
find "$site" -depth -type d \( -name tests -o -name test \) -exec rm -rf {} +
# onnxruntime's model-conversion tooling (transformers, quantization ...): not needed to run a session
rm -rf "$site"/onnxruntime/transformers "$site"/onnxruntime/quantization "$site"/onnxruntime/tools \
    "$site"/onnxruntime/datasets
# onnxruntime's C API library (libonnxruntime.so, ~35 MB) is shipped for C/C++ programs: the Python
# binding carries its own copy. Removed only when no library of the package loads it (NEEDED).
capi="$site/onnxruntime/capi"
if [ -d "$capi" ] && command -v readelf >/dev/null \
    && ! readelf -d "$capi"/*.so* 2>/dev/null | grep -q 'NEEDED.*\[libonnxruntime\.so'; then
    rm -f "$capi"/libonnxruntime.so*
fi
# sources, headers and stubs of compiled extensions. Not those of the CUDA wheels (nvidia/) and of
# numba-cuda: NVRTC compiles numba-cuda's CUDA sources with those headers at run time.
find "$site" -type f \( -name '*.c' -o -name '*.cpp' -o -name '*.h' -o -name '*.hpp' -o -name '*.pyx' \
    -o -name '*.pxd' -o -name '*.pxi' -o -name '*.pyi' \) ! -path "$site/nvidia/*" ! -path "$site/numba_cuda/*" -delete
find "$site" -depth -type d -name include -path '*/numpy/*' -exec rm -rf {} +

# symbols of the extension modules and libraries. Not the libraries auditwheel vendored into
# <package>.libs/: patchelf rewrote their headers, and strip then leaves them unloadable ("ELF load
# command address/offset not page-aligned"); they are stripped already. Not the CUDA wheels'
# libraries either (nvidia/: 2 GB, stripped already, with device code that is not strip's business).
find "$site" -type f \( -name '*.so' -o -name '*.so.*' \) ! -path '*.libs/*' ! -path "$site/nvidia/*" \
    -exec strip --strip-unneeded {} +

# bytecode of what was removed
find "$site" -depth -type d -name __pycache__ -empty -exec rmdir {} +
