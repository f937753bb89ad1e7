"""The GPU path: numba CUDA kernels and the code that keeps the data on the device.

Importing this package must not import ``numba.cuda`` (that initialises CUDA): modules that need it
import it themselves.
"""
