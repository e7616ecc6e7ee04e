"""lowbit.formats.cpu: numba kernels, the default backend for CPU data.

The same semantics as the reference implementation, bit for bit, in fused
single-pass parallel loops over the input: no float64 copies of the data,
no temporaries beyond the output. Formats reach the kernels as small tuples
of integers (:mod:`.descriptors`), so one compiled kernel serves every
format of a family.
"""
