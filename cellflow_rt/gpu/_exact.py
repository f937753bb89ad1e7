"""Multiply and add on the device rounding exactly like the CPU code: one rounding per operation.

NVVM contracts ``a * b + c`` into a fused multiply-add unless told otherwise (numba-cuda passes no
``-fma=0``): one rounding instead of two, so the last bit of a result can differ from the CPU
kernel's and from numpy's. The device resize and blend kernels must give the CPU's numbers exactly,
so they multiply and add through libdevice's ``*_rn`` intrinsics, which are never contracted.
Numba's CUDA simulator has no libdevice (its functions are stubs): there, numpy scalar arithmetic
already rounds once per operation.
"""
from numba import config, cuda

if config.ENABLE_CUDASIM:
    @cuda.jit(device=True)
    def mul32(a, b):
        return a * b

    @cuda.jit(device=True)
    def add32(a, b):
        return a + b

    @cuda.jit(device=True)
    def mul64(a, b):
        return a * b

    @cuda.jit(device=True)
    def add64(a, b):
        return a + b
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def mul32(a, b):
        return libdevice.fmul_rn(a, b)

    @cuda.jit(device=True)
    def add32(a, b):
        return libdevice.fadd_rn(a, b)

    @cuda.jit(device=True)
    def mul64(a, b):
        return libdevice.dmul_rn(a, b)

    @cuda.jit(device=True)
    def add64(a, b):
        return libdevice.dadd_rn(a, b)
