// The GPU kernels compiled as C++ and run on the host, thread after thread
// (LOWBIT_EMULATE_DEVICE, see launch.cuh): the emulated build's
// implementation of launchers.h, which tests use to run the .cu files' own
// code on machines without a GPU.
#ifndef LOWBIT_EMULATE_DEVICE
#error "emulated_kernels.cpp is built with -DLOWBIT_EMULATE_DEVICE"
#endif

#include "element_kernels.cu"
#include "block_kernels.cu"
#include "mx_matmul.cu"
