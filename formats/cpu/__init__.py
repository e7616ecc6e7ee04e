"""lowbit.formats.cpu: numba kernels, the ``"cpu"`` backend (:mod:`.backend`),
the default for CPU data.

The same semantics as the reference implementation, bit for bit, in fused
single-pass parallel loops over the input: no float64 copies of the data,
no temporaries beyond the output. Formats reach the kernels as small tuples
of integers (the descriptors of :mod:`lowbit.formats.abi`), so one compiled
kernel serves every format of a family.

Modules by job: ``element_backend`` and ``scaled_backend`` adapt tensors
and pick a kernel; ``element_kernels``, ``block_kernels`` and
``microexponent_kernels`` are the general kernels (float64, any layout,
every policy) over the per-value math of ``scalar``; ``fast32`` (element
formats), ``fast_mx``, ``fast_amax`` and ``fast_microexponent`` (one per
scaled family) and ``fast_block_decode`` are the float32 fast paths;
``bits`` packs codes, ``reductions`` finds block maxima, ``views`` and
``buffers`` handle inputs and outputs. ``compiling`` compiles and caches
every kernel (its :func:`~.compiling.jit` replaces numba's ``njit``), and
``threads`` picks the threading layer they run on.
"""
