// Turning run-time dtype numbers into template arguments, for the GPU
// launchers and their host twins alike.
#pragma once

#include <stdint.h>

#include <type_traits>

#include "launchers.h"

namespace lowbit {

template <int V> using Int = std::integral_constant<int, V>;

// Calls f(Int<DT>()) for a DType number.
template <typename F> void with_dtype(int dtype, F f) {
  switch (dtype) {
    case F16: f(Int<F16>()); break;
    case BF16: f(Int<BF16>()); break;
    case F32: f(Int<F32>()); break;
    default: f(Int<F64>()); break;
  }
}

template <int CT> struct CodeStorage;
template <> struct CodeStorage<U8> { typedef uint8_t type; };
template <> struct CodeStorage<I8> { typedef int8_t type; };
template <> struct CodeStorage<I16> { typedef int16_t type; };
template <> struct CodeStorage<U16> { typedef uint16_t type; };
template <> struct CodeStorage<I32> { typedef int32_t type; };
template <> struct CodeStorage<U32> { typedef uint32_t type; };
template <> struct CodeStorage<I64> { typedef int64_t type; };

// Calls f(Int<CT>()) for a CodeType number.
template <typename F> void with_code_type(int code_type, F f) {
  switch (code_type) {
    case U8: f(Int<U8>()); break;
    case I8: f(Int<I8>()); break;
    case I16: f(Int<I16>()); break;
    case U16: f(Int<U16>()); break;
    case I32: f(Int<I32>()); break;
    case U32: f(Int<U32>()); break;
    default: f(Int<I64>()); break;
  }
}

// Calls f(Int<F32>()) or f(Int<F64>()) for a decode's output dtype.
template <typename F> void with_output_dtype(int out_dtype, F f) {
  if (out_dtype == F32) f(Int<F32>());
  else f(Int<F64>());
}

// Calls f(Int<A>(), Int<B>()) for a matmul's pair of MmaType numbers: both
// TYPE_INT8, both TYPE_FP16, or any two FP8 types.
template <typename F> void with_mma_types(int a_type, int b_type, F f) {
  if (a_type == TYPE_INT8) f(Int<TYPE_INT8>(), Int<TYPE_INT8>());
  else if (a_type == TYPE_FP16) f(Int<TYPE_FP16>(), Int<TYPE_FP16>());
  else if (a_type == TYPE_E4M3 && b_type == TYPE_E4M3) f(Int<TYPE_E4M3>(), Int<TYPE_E4M3>());
  else if (a_type == TYPE_E4M3) f(Int<TYPE_E4M3>(), Int<TYPE_E5M2>());
  else if (b_type == TYPE_E4M3) f(Int<TYPE_E5M2>(), Int<TYPE_E4M3>());
  else f(Int<TYPE_E5M2>(), Int<TYPE_E5M2>());
}

}  // namespace lowbit
