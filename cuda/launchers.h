// The kernels' entry points: raw pointers, sizes, strides and a stream; no
// torch types. Implemented for the GPU by element_kernels.cu and
// block_kernels.cu, and on the host (for tests on machines without a GPU)
// by host_launchers.cpp, both over the same per-element and per-block
// functions of element_math.cuh, block_math.cuh and codebook_math.cuh.
//
// Status outputs (`inexact`, `first_invalid`, `out_of_range`) live in the
// same memory as the data and must be initialised by the caller: 0, 0, and
// UINT64_MAX for first_invalid.
#pragma once

#include "codebook_math.cuh"
#include "mx_matmul_math.cuh"

#ifdef LOWBIT_HOST_ONLY
typedef struct CUstream_st* cudaStream_t;
#else
#include <cuda_runtime.h>
#endif

namespace lowbit {

// Integer dtypes of codes.
enum CodeType { U8 = 0, I8 = 1, I16 = 2, U16 = 3, I32 = 4, U32 = 5, I64 = 6 };

// Element formats (ElementDesc: FloatFormat, IntFormat; Codebook: a
// CodebookFormat's table in the same memory as the data), on n contiguous
// elements. dtype: a DType.
void element_quantize(int dtype, const void* x, void* out, long long n, ElementDesc d, Policy p, int* inexact,
                      cudaStream_t stream);
void element_quantize(int dtype, const void* x, void* out, long long n, Codebook d, Policy p, int* inexact,
                      cudaStream_t stream);
// codes: U8, U16 or U32, one per element.
void element_encode(int dtype, const void* x, void* codes, int code_type, long long n, ElementDesc d, Policy p,
                    unsigned long long* first_invalid, cudaStream_t stream);
void element_encode(int dtype, const void* x, void* codes, int code_type, long long n, Codebook d, Policy p,
                    unsigned long long* first_invalid, cudaStream_t stream);
// out: F32 or F64.
void element_decode(int code_type, const void* codes, void* out, int out_dtype, long long n, ElementDesc d,
                    int nbits, int* out_of_range, cudaStream_t stream);
void element_decode(int code_type, const void* codes, void* out, int out_dtype, long long n, Codebook d,
                    int nbits, int* out_of_range, cudaStream_t stream);

// BlockFormat (BlockFormatDesc; CodebookBlocks: codebook elements with
// fp32 scales), blocks along the axis of the view v of x; quantize writes a
// contiguous output of x's (outer, length, inner) shape.
void block_quantize(int dtype, const void* x, void* out, BlockView v, BlockFormatDesc f, Policy p, int* inexact,
                    cudaStream_t stream);
void block_quantize(int dtype, const void* x, void* out, BlockView v, CodebookBlocks f, Policy p, int* inexact,
                    cudaStream_t stream);
// elements: packed codes, zeroed unless every block's codes fill whole bytes,
// in whole 32-bit words; scales: one code per block (for CodebookBlocks the
// fp32 scale's bits, which decode also takes).
void block_encode(int dtype, const void* x, unsigned char* elements, int32_t* scales, BlockView v, BlockFormatDesc f,
                  Policy p, cudaStream_t stream);
void block_encode(int dtype, const void* x, unsigned char* elements, int32_t* scales, BlockView v, CodebookBlocks f,
                  Policy p, cudaStream_t stream);
void block_decode(const unsigned char* elements, const int32_t* scales, void* out, int out_dtype, BlockView v,
                  BlockFormatDesc f, cudaStream_t stream);
void block_decode(const unsigned char* elements, const int32_t* scales, void* out, int out_dtype, BlockView v,
                  CodebookBlocks f, cudaStream_t stream);

// MicroexponentFormat, likewise; subscales: packed sub-block shifts.
void microexponent_quantize(int dtype, const void* x, void* out, BlockView v, MicroParams mp, Policy p, int* inexact,
                            cudaStream_t stream);
void microexponent_encode(int dtype, const void* x, unsigned char* elements, int32_t* scales,
                          unsigned char* subscales, BlockView v, MicroParams mp, Policy p, cudaStream_t stream);
void microexponent_decode(const unsigned char* elements, const int32_t* scales, const unsigned char* subscales,
                          void* out, int out_dtype, BlockView v, MicroParams mp, cudaStream_t stream);

// The MX matmul (mx_matmul_math.cuh): out (m x n, out_dtype F32, BF16 or F16)
// = A B^T + bias. a: m rows of k elements of a_type (an MmaType; a pair
// with_mma_types accepts), row-major, 16-byte aligned; a_scales: m rows of
// k / block float32 scales; likewise b (n rows); bias: n float32, or null.
// k and block are multiples of 32.
void mx_matmul(int a_type, int b_type, const unsigned char* a, const float* a_scales, const unsigned char* b,
               const float* b_scales, const float* bias, void* out, int out_dtype, long long m, long long n,
               long long k, int block, cudaStream_t stream);

// An operand's preparation for mx_matmul (mx_matmul_math.cuh): n elements'
// inputs from their packed codes through element_table (skipped when it is
// null), and nscales block scales from their codes through scale_table.
void mx_prepare(const unsigned char* packed, int code_bits, const unsigned char* element_table, int bytes,
                unsigned char* inputs, long long n, const int32_t* scale_codes, const float* scale_table, int entries,
                float* scales, long long nscales, cudaStream_t stream);

}  // namespace lowbit
