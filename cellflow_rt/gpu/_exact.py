"""Products that round like the CPU path: no fused multiply-add.

libNVVM contracts ``a * b + c`` into one FMA by default (``-fma=1``; numba-cuda 0.30 has no switch
to turn it off), which rounds once where the CPU rounds twice, so the Euler steps and the flow
check would drift from the CPU path in the last bit. libdevice's ``__nv_fmul_rn`` / ``__nv_dmul_rn``
compile to PTX ``mul.rn``, which neither NVVM nor ptxas ever fuses with an add. So the rule in the
exact kernels is: every product whose result feeds a sum is written ``mul32(a, b)`` /
``mul64(a, b)`` (``add32`` / ``add64`` are there for code that prefers to mark the sums too);
plain sums, divisions and square roots are IEEE-rounded as they are (numba compiles them with
``prec-div`` / ``prec-sqrt`` unless ``fastmath``, which these kernels never use).

The simulator cannot run libdevice (its functions are stubs there), so under
``NUMBA_ENABLE_CUDASIM=1`` the helpers are plain numpy-scalar products, which is the CPU's
arithmetic.
"""
import numpy as np

from ._device import SIMULATOR, device_function

if SIMULATOR:
    def mul32(a, b):
        return np.float32(a) * np.float32(b)

    def add32(a, b):
        return np.float32(a) + np.float32(b)

    def mul64(a, b):
        return np.float64(a) * np.float64(b)

    def add64(a, b):
        return np.float64(a) + np.float64(b)
else:  # pragma: no cover - needs a GPU
    from numba.cuda import libdevice

    @device_function(forceinline=True)
    def mul32(a, b):
        return libdevice.fmul_rn(a, b)

    @device_function(forceinline=True)
    def add32(a, b):
        return libdevice.fadd_rn(a, b)

    @device_function(forceinline=True)
    def mul64(a, b):
        return libdevice.dmul_rn(a, b)

    @device_function(forceinline=True)
    def add64(a, b):
        return libdevice.dadd_rn(a, b)
