"""lowbit.cuda: the CUDA extension (fast cast and MX matmul kernels). Not
built yet; CUDA tensors use the reference implementation in lowbit.formats."""
