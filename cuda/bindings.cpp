// Torch bindings of the kernels: check and adapt tensors, allocate outputs,
// launch on the current stream. Each op returns its outputs and a status
// tensor (the caller reads it: inexact outputs, the first element that
// cannot be encoded, codes out of range), so no op synchronises itself.
//
// Built three ways: with nvcc's kernels as the ops lowbit_cuda::* for CUDA
// tensors; for CPU tensors (-DLOWBIT_HOST_ONLY), for the tests of machines
// without a GPU, with host_launchers.cpp as lowbit_host::* (the host twin)
// and with the .cu kernels run on the host as lowbit_emulated::*
// (emulated_kernels.cpp, -DLOWBIT_EMULATE_DEVICE).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "launchers.h"

#if defined(LOWBIT_EMULATE_DEVICE)
#define LOWBIT_OPS lowbit_emulated
#define LOWBIT_DEVICE CPU
#elif defined(LOWBIT_HOST_ONLY)
#define LOWBIT_OPS lowbit_host
#define LOWBIT_DEVICE CPU
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define LOWBIT_OPS lowbit_cuda
#define LOWBIT_DEVICE CUDA
#endif

namespace lowbit {
namespace {

using at::Tensor;

// The device of `x` made current, and its current stream (none on the host).
struct OnDevice {
// launched() raises if the last kernel launch failed (a launch error is
// otherwise silent and leaves the outputs unwritten); capability() is the
// device's compute capability as 10 * major + minor (the host builds run
// every instruction: 1000).
#ifdef LOWBIT_HOST_ONLY
  explicit OnDevice(const Tensor&) {}
  cudaStream_t stream() const { return nullptr; }
  void launched() const {}
  int capability() const { return 1000; }
#else
  c10::cuda::CUDAGuard guard;
  explicit OnDevice(const Tensor& x) : guard(x.device()) {}
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream().stream(); }
  void launched() const { C10_CUDA_KERNEL_LAUNCH_CHECK(); }
  int capability() const {
    int major = 0, minor = 0, device = guard.current_device().index();
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    return 10 * major + minor;
  }
#endif
};

int dtype_of(const Tensor& x) {
  switch (x.scalar_type()) {
    case at::kHalf: return F16;
    case at::kBFloat16: return BF16;
    case at::kFloat: return F32;
    case at::kDouble: return F64;
    default:
      TORCH_CHECK(false, "lowbit: input dtype must be float16, bfloat16, float32 or float64; got ", x.scalar_type());
  }
  return F64;
}

int code_type_of(const Tensor& codes) {
  switch (codes.scalar_type()) {
    case at::kByte: return U8;
    case at::kChar: return I8;
    case at::kShort: return I16;
    case at::kUInt16: return U16;
    case at::kInt: return I32;
    case at::kUInt32: return U32;
    case at::kLong: return I64;
    default: TORCH_CHECK(false, "lowbit: codes must be an integer dtype; got ", codes.scalar_type());
  }
  return I64;
}

int output_dtype_of(at::ScalarType dtype) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "lowbit: decode gives float32 or float64; got ", dtype);
  return dtype == at::kFloat ? F32 : F64;
}

void check_device(const Tensor& x, const char* name) {
  TORCH_CHECK(x.device().type() == c10::DeviceType::LOWBIT_DEVICE, "lowbit: ", name, " must be on ",
              c10::DeviceType::LOWBIT_DEVICE, ", got ", x.device());
}

// x on the device type of this build and on the same device as `first` (named first_name).
void check_same_device(const Tensor& x, const char* name, const Tensor& first, const char* first_name) {
  check_device(x, name);
  TORCH_CHECK(x.device() == first.device(), "lowbit: ", name, " must be on the same device as ", first_name, " (",
              first.device(), "), got ", x.device());
}

ElementDesc element_desc(at::IntArrayRef fields) {
  TORCH_CHECK(fields.size() == ELEMENT_FIELDS, "lowbit: an element descriptor has ", int(ELEMENT_FIELDS), " fields");
  ElementDesc d;
  for (int k = 0; k < ELEMENT_FIELDS; ++k) d.f[k] = fields[k];
  return d;
}

BlockParams block_params(at::ArrayRef<double> f) {
  TORCH_CHECK(f.size() == BLOCK_FIELDS, "lowbit: block parameters have ", int(BLOCK_FIELDS), " fields");
  return BlockParams{int(f[BLOCK_RULE]), int(f[BLOCK_SCALE_EMIN]), int(f[BLOCK_SCALE_EMAX]),
                     int(f[BLOCK_ELEMENT_EMAX]), f[BLOCK_ELEMENT_MAX], int(f[BLOCK_ELEMENT_MANTISSA_BITS]),
                     f[BLOCK_DIVISOR], int(f[BLOCK_SIZE]), int(f[BLOCK_ELEMENT_BITS]), int(f[BLOCK_HAS_TENSOR_SCALE]),
                     int(f[BLOCK_SCALE_NAN]), int(f[BLOCK_ROUND_FLOAT32])};
}

MicroParams micro_params(at::IntArrayRef f) {
  TORCH_CHECK(f.size() == MICRO_FIELDS, "lowbit: microexponent parameters have ", int(MICRO_FIELDS), " fields");
  return MicroParams{int(f[MICRO_MAN]), int(f[MICRO_BLOCK]), int(f[MICRO_SUB_BLOCK]), int(f[MICRO_EXP_BITS]),
                     int(f[MICRO_MICRO_BITS]), int(f[MICRO_EMIN]), int(f[MICRO_EMAX]), int(f[MICRO_EXP_BIAS])};
}

Policy policy(int64_t mode, int64_t overflow, int64_t key, double tiny) {
  return Policy{int(mode), int(overflow), (unsigned long long)key, tiny};
}

// x as an (outer, length, inner) view along `axis`, without a copy where its strides allow.
std::pair<Tensor, BlockView> axis_view(const Tensor& x, int64_t axis, int64_t block) {
  TORCH_CHECK(x.dim() == 0 ? axis == 0 : (axis >= 0 && axis < x.dim()), "lowbit: axis ", axis, " is out of range");
  int64_t outer = 1, inner = 1, length = x.dim() == 0 ? 1 : x.size(axis);
  for (int64_t k = 0; k < axis; ++k) outer *= x.size(k);
  for (int64_t k = axis + 1; k < x.dim(); ++k) inner *= x.size(k);
  Tensor view = x.reshape({outer, length, inner});
  BlockView v{outer, length, inner, (length + block - 1) / block, view.stride(0), view.stride(1), view.stride(2)};
  return {view, v};
}

// A buffer for `bits` of packed codes, in whole 32-bit words (the kernels OR
// codes in by words), zeroed unless every row's codes fill whole bytes.
Tensor packed_buffer(const Tensor& like, int64_t bits, int64_t row_bits) {
  int64_t bytes = (bits + 7) / 8, words = (bytes + 3) / 4;
  auto options = like.options().dtype(at::kByte);
  Tensor buffer = row_bits % 8 == 0 ? at::empty({words * 4}, options) : at::zeros({words * 4}, options);
  return buffer.narrow(0, 0, bytes);
}

// A decode's output of `shape` (new, contiguous) with its view along
// `axis`, after checking that the codes cover its blocks.
std::pair<Tensor, BlockView> decode_output(const Tensor& elements, const Tensor& scales, at::IntArrayRef shape,
                                           int64_t axis, int64_t block, int64_t bits_per_block,
                                           at::ScalarType dtype) {
  check_device(elements, "elements");
  check_same_device(scales, "scales", elements, "elements");
  Tensor out = at::empty(shape, elements.options().dtype(dtype));
  BlockView v = axis_view(out, axis, block).second;
  TORCH_CHECK(scales.numel() == block_count(v), "lowbit: expected ", block_count(v), " scale codes, got ",
              scales.numel());
  TORCH_CHECK(elements.numel() * 8 >= block_count(v) * bits_per_block, "lowbit: too few element bytes");
  return {out, v};
}

Tensor flag(const Tensor& like) { return at::zeros({}, like.options().dtype(at::kInt)); }

// A CodebookFormat's table: contiguous 1-D float64 on x's device, 2 to
// 65536 strictly increasing float32 numbers (CodebookFormat checks the values).
Codebook codebook(const Tensor& table, const Tensor& x) {
  check_same_device(table, "table", x, "x");
  TORCH_CHECK(table.scalar_type() == at::kDouble && table.dim() == 1 && table.is_contiguous() &&
                  table.numel() >= 2 && table.numel() <= 65536,
              "lowbit: table must be a contiguous 1-D float64 tensor of 2 to 65536 values");
  return Codebook{table.data_ptr<double>(), int(table.numel())};
}

CodebookBlocks codebook_blocks(const Tensor& table, const Tensor& x, int64_t block, int64_t bits) {
  TORCH_CHECK(block > 0 && bits >= 1 && bits <= 16 && table.numel() <= (int64_t(1) << bits),
              "lowbit: block must be positive and bits 1 to 16, enough for the table's codes");
  return CodebookBlocks{codebook(table, x), int(block), int(bits)};
}

// -- element formats (D: ElementDesc, Codebook) --------------------------------
template <typename D> std::tuple<Tensor, Tensor> quantize_elements(const Tensor& x, const D& d, const Policy& p) {
  OnDevice on(x);
  Tensor input = x.contiguous(), out = at::empty(x.sizes(), x.options()), inexact = flag(x);
  element_quantize(dtype_of(x), input.data_ptr(), out.data_ptr(), x.numel(), d, p, inexact.data_ptr<int>(),
                   on.stream());
  on.launched();
  return {out, inexact};
}

template <typename D>
std::tuple<Tensor, Tensor> encode_elements(const Tensor& x, const D& d, const Policy& p, int64_t code_bits) {
  TORCH_CHECK(code_bits == 8 || code_bits == 16 || code_bits == 32, "lowbit: code_bits must be 8, 16 or 32");
  OnDevice on(x);
  at::ScalarType code_dtype = code_bits == 8 ? at::kByte : code_bits == 16 ? at::kUInt16 : at::kUInt32;
  Tensor input = x.contiguous(), codes = at::empty(x.sizes(), x.options().dtype(code_dtype));
  Tensor first_invalid = at::full({}, -1, x.options().dtype(at::kLong));  // UINT64_MAX: none
  element_encode(dtype_of(x), input.data_ptr(), codes.data_ptr(), code_type_of(codes), x.numel(), d, p,
                 reinterpret_cast<unsigned long long*>(first_invalid.data_ptr<int64_t>()), on.stream());
  on.launched();
  return {codes, first_invalid};
}

template <typename D>
std::tuple<Tensor, Tensor> decode_elements(const Tensor& codes, const D& d, int64_t nbits, at::ScalarType dtype) {
  OnDevice on(codes);
  Tensor input = codes.contiguous(), out = at::empty(codes.sizes(), codes.options().dtype(dtype)),
         out_of_range = flag(codes);
  element_decode(code_type_of(codes), input.data_ptr(), out.data_ptr(), output_dtype_of(dtype), codes.numel(), d,
                 int(nbits), out_of_range.data_ptr<int>(), on.stream());
  on.launched();
  return {out, out_of_range};
}

std::tuple<Tensor, Tensor> element_quantize_op(const Tensor& x, at::IntArrayRef desc, int64_t mode, int64_t overflow,
                                               int64_t key, double tiny) {
  check_device(x, "x");
  return quantize_elements(x, element_desc(desc), policy(mode, overflow, key, tiny));
}

std::tuple<Tensor, Tensor> element_encode_op(const Tensor& x, at::IntArrayRef desc, int64_t mode, int64_t overflow,
                                             int64_t key, double tiny, int64_t code_bits) {
  check_device(x, "x");
  return encode_elements(x, element_desc(desc), policy(mode, overflow, key, tiny), code_bits);
}

std::tuple<Tensor, Tensor> element_decode_op(const Tensor& codes, at::IntArrayRef desc, int64_t nbits,
                                             at::ScalarType dtype) {
  check_device(codes, "codes");
  return decode_elements(codes, element_desc(desc), nbits, dtype);
}

std::tuple<Tensor, Tensor> codebook_quantize_op(const Tensor& x, const Tensor& table, int64_t mode, int64_t key,
                                                double tiny) {
  check_device(x, "x");
  return quantize_elements(x, codebook(table, x), policy(mode, 0, key, tiny));
}

std::tuple<Tensor, Tensor> codebook_encode_op(const Tensor& x, const Tensor& table, int64_t mode, int64_t key,
                                              double tiny, int64_t code_bits) {
  check_device(x, "x");
  return encode_elements(x, codebook(table, x), policy(mode, 0, key, tiny), code_bits);
}

std::tuple<Tensor, Tensor> codebook_decode_op(const Tensor& codes, const Tensor& table, int64_t nbits,
                                              at::ScalarType dtype) {
  check_device(codes, "codes");
  TORCH_CHECK(nbits >= 1 && nbits <= 16, "lowbit: a codebook's codes have 1 to 16 bits");
  return decode_elements(codes, codebook(table, codes), nbits, dtype);
}

// -- BlockFormat (F: BlockFormatDesc, CodebookBlocks) ----------------------------
template <typename F>
std::tuple<Tensor, Tensor> quantize_blocks(const Tensor& x, int64_t axis, const F& f, const Policy& p) {
  OnDevice on(x);
  auto [view, v] = axis_view(x, axis, block_size(f));
  Tensor out = at::empty(x.sizes(), x.options()), inexact = flag(x);
  block_quantize(dtype_of(x), view.data_ptr(), out.data_ptr(), v, f, p, inexact.data_ptr<int>(), on.stream());
  on.launched();
  return {out, inexact};
}

template <typename F>
std::tuple<Tensor, Tensor> encode_blocks(const Tensor& x, int64_t axis, const F& f, const Policy& p) {
  OnDevice on(x);
  auto [view, v] = axis_view(x, axis, block_size(f));
  int64_t rows = block_count(v), row_bits = int64_t(block_size(f)) * element_bits(f);
  Tensor elements = packed_buffer(x, rows * row_bits, row_bits);
  Tensor scales = at::empty({rows}, x.options().dtype(at::kInt));
  block_encode(dtype_of(x), view.data_ptr(), elements.data_ptr<uint8_t>(), scales.data_ptr<int32_t>(), v, f, p,
               on.stream());
  on.launched();
  return {elements, scales};
}

template <typename F>
Tensor decode_blocks(const Tensor& elements, const Tensor& scales, at::IntArrayRef shape, int64_t axis, const F& f,
                     at::ScalarType dtype) {
  OnDevice on(elements);
  auto [out, v] = decode_output(elements, scales, shape, axis, block_size(f),
                                int64_t(block_size(f)) * element_bits(f), dtype);
  Tensor packed = elements.contiguous(), scale_codes = scales.to(at::kInt).contiguous();
  block_decode(packed.data_ptr<uint8_t>(), scale_codes.data_ptr<int32_t>(), out.data_ptr(), output_dtype_of(dtype), v,
               f, on.stream());
  on.launched();
  return out;
}

BlockFormatDesc block_format(at::IntArrayRef element, at::IntArrayRef scale, at::ArrayRef<double> params) {
  return BlockFormatDesc{element_desc(element), element_desc(scale), block_params(params)};
}

std::tuple<Tensor, Tensor> block_quantize_op(const Tensor& x, int64_t axis, at::IntArrayRef element,
                                             at::IntArrayRef scale, at::ArrayRef<double> params, int64_t mode,
                                             int64_t key, double tiny) {
  check_device(x, "x");
  return quantize_blocks(x, axis, block_format(element, scale, params), policy(mode, 0, key, tiny));
}

std::tuple<Tensor, Tensor> block_encode_op(const Tensor& x, int64_t axis, at::IntArrayRef element,
                                           at::IntArrayRef scale, at::ArrayRef<double> params, int64_t mode,
                                           int64_t key, double tiny) {
  check_device(x, "x");
  return encode_blocks(x, axis, block_format(element, scale, params), policy(mode, 0, key, tiny));
}

Tensor block_decode_op(const Tensor& elements, const Tensor& scales, at::IntArrayRef shape, int64_t axis,
                       at::IntArrayRef element, at::IntArrayRef scale, at::ArrayRef<double> params,
                       at::ScalarType dtype) {
  return decode_blocks(elements, scales, shape, axis, block_format(element, scale, params), dtype);
}

std::tuple<Tensor, Tensor> codebook_block_quantize_op(const Tensor& x, int64_t axis, const Tensor& table,
                                                      int64_t block, int64_t bits, int64_t mode, int64_t key,
                                                      double tiny) {
  check_device(x, "x");
  return quantize_blocks(x, axis, codebook_blocks(table, x, block, bits), policy(mode, 0, key, tiny));
}

std::tuple<Tensor, Tensor> codebook_block_encode_op(const Tensor& x, int64_t axis, const Tensor& table,
                                                    int64_t block, int64_t bits, int64_t mode, int64_t key,
                                                    double tiny) {
  check_device(x, "x");
  return encode_blocks(x, axis, codebook_blocks(table, x, block, bits), policy(mode, 0, key, tiny));
}

// scales: the blocks' fp32 scales as their bits (int32).
Tensor codebook_block_decode_op(const Tensor& elements, const Tensor& scales, at::IntArrayRef shape, int64_t axis,
                                const Tensor& table, int64_t block, int64_t bits, at::ScalarType dtype) {
  check_device(elements, "elements");
  TORCH_CHECK(scales.scalar_type() == at::kInt, "lowbit: scales must be the fp32 scales' bits as int32");
  return decode_blocks(elements, scales, shape, axis, codebook_blocks(table, elements, block, bits), dtype);
}

// -- MicroexponentFormat ------------------------------------------------------
std::tuple<Tensor, Tensor> microexponent_quantize_op(const Tensor& x, int64_t axis, at::IntArrayRef params,
                                                     int64_t mode, int64_t key, double tiny) {
  check_device(x, "x");
  OnDevice on(x);
  MicroParams mp = micro_params(params);
  auto [view, v] = axis_view(x, axis, mp.block);
  Tensor out = at::empty(x.sizes(), x.options()), inexact = flag(x);
  microexponent_quantize(dtype_of(x), view.data_ptr(), out.data_ptr(), v, mp, policy(mode, 0, key, tiny),
                         inexact.data_ptr<int>(), on.stream());
  on.launched();
  return {out, inexact};
}

std::tuple<Tensor, Tensor, Tensor> microexponent_encode_op(const Tensor& x, int64_t axis, at::IntArrayRef params,
                                                           int64_t mode, int64_t key, double tiny) {
  check_device(x, "x");
  OnDevice on(x);
  MicroParams mp = micro_params(params);
  auto [view, v] = axis_view(x, axis, mp.block);
  int64_t rows = block_count(v), row_bits = int64_t(mp.block) * (mp.man + 1);
  int64_t shift_bits = int64_t(mp.block / mp.sub_block) * mp.micro_bits;
  Tensor elements = packed_buffer(x, rows * row_bits, row_bits);
  Tensor subscales = packed_buffer(x, rows * shift_bits, shift_bits);
  Tensor scales = at::empty({rows}, x.options().dtype(at::kInt));
  microexponent_encode(dtype_of(x), view.data_ptr(), elements.data_ptr<uint8_t>(), scales.data_ptr<int32_t>(),
                       subscales.data_ptr<uint8_t>(), v, mp, policy(mode, 0, key, tiny), on.stream());
  on.launched();
  return {elements, scales, subscales};
}

Tensor microexponent_decode_op(const Tensor& elements, const Tensor& scales, const Tensor& subscales,
                               at::IntArrayRef shape, int64_t axis, at::IntArrayRef params, at::ScalarType dtype) {
  check_same_device(subscales, "subscales", elements, "elements");
  OnDevice on(elements);
  MicroParams mp = micro_params(params);
  auto [out, v] = decode_output(elements, scales, shape, axis, mp.block, int64_t(mp.block) * (mp.man + 1), dtype);
  TORCH_CHECK(subscales.numel() * 8 >= block_count(v) * (mp.block / mp.sub_block) * mp.micro_bits,
              "lowbit: too few sub-block shift bytes");
  Tensor packed = elements.contiguous(), scale_codes = scales.to(at::kInt).contiguous(),
         shifts = subscales.contiguous();
  microexponent_decode(packed.data_ptr<uint8_t>(), scale_codes.data_ptr<int32_t>(), shifts.data_ptr<uint8_t>(),
                       out.data_ptr(), output_dtype_of(dtype), v, mp, on.stream());
  on.launched();
  return out;
}

// -- MX matmul -----------------------------------------------------------------
// t, contiguous and 16-byte aligned (the kernel reads rows with 16-byte copies).
Tensor aligned(const Tensor& t) {
  Tensor c = t.contiguous();
  return reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0 ? c : c.clone();
}

// An operand's tensor-core inputs (rows x k elements of element_table's
// width; the packed codes themselves, viewed, when element_table is None)
// and its float32 block scales (rows x blocks).
std::tuple<Tensor, Tensor> mx_prepare_op(const Tensor& packed, const Tensor& scale_codes,
                                         const std::optional<Tensor>& element_table, const Tensor& scale_table,
                                         int64_t code_bits, int64_t rows, int64_t k) {
  check_device(packed, "packed");
  check_same_device(scale_codes, "scale_codes", packed, "packed");
  check_same_device(scale_table, "scale_table", packed, "packed");
  TORCH_CHECK(packed.scalar_type() == at::kByte, "lowbit: packed must be uint8 bytes");
  TORCH_CHECK(code_bits >= 1 && code_bits <= 16 && rows >= 0 && k >= 0, "lowbit: bad code_bits, rows or k");
  TORCH_CHECK(packed.numel() * 8 >= rows * k * code_bits, "lowbit: too few packed bytes for ", rows * k, " codes");
  TORCH_CHECK(scale_table.scalar_type() == at::kFloat && scale_table.dim() == 1,
              "lowbit: scale_table must be 1-D float32");
  TORCH_CHECK(rows == 0 ? scale_codes.numel() == 0 : scale_codes.numel() % rows == 0,
              "lowbit: scale_codes must hold the same number of blocks for every row");
  OnDevice on(packed);
  Tensor codes = packed.contiguous().reshape(-1), scale_values = scale_codes.to(at::kInt).contiguous(),
         table_values = scale_table.contiguous();
  Tensor scales = at::empty({rows, rows ? scale_codes.numel() / rows : 0}, packed.options().dtype(at::kFloat));
  Tensor inputs, element_values;
  int64_t bytes = 1;
  if (element_table) {
    check_same_device(*element_table, "element_table", packed, "packed");
    TORCH_CHECK(element_table->scalar_type() == at::kByte && element_table->dim() == 2 &&
                    element_table->size(0) == (int64_t(1) << code_bits),
                "lowbit: element_table must be uint8 of shape (2**code_bits, bytes)");
    element_values = element_table->contiguous();
    bytes = element_table->size(1);
    inputs = at::empty({rows, k * bytes}, packed.options());
  } else {
    TORCH_CHECK(code_bits == 8, "lowbit: without an element_table the codes are the inputs: code_bits must be 8");
    inputs = codes.narrow(0, 0, rows * k).view({rows, k});
  }
  mx_prepare(codes.data_ptr<uint8_t>(), int(code_bits), element_table ? element_values.data_ptr<uint8_t>() : nullptr,
             int(bytes), inputs.data_ptr<uint8_t>(), rows * k, scale_values.data_ptr<int32_t>(),
             table_values.data_ptr<float>(), int(table_values.numel()), scales.data_ptr<float>(), scales.numel(),
             on.stream());
  on.launched();
  return {inputs, scales};
}

Tensor mx_matmul_op(const Tensor& a, const Tensor& a_scales, const Tensor& b, const Tensor& b_scales,
                    const std::optional<Tensor>& bias, int64_t a_type, int64_t b_type, int64_t block,
                    at::ScalarType out_dtype) {
  for (auto [t, name] : {std::pair{&a, "a"}, {&a_scales, "a_scales"}, {&b, "b"}, {&b_scales, "b_scales"}}) {
    check_same_device(*t, name, a, "a");
    TORCH_CHECK(t->dim() == 2, "lowbit: ", name, " must be 2-D, got ", t->dim(), " dimensions");
  }
  TORCH_CHECK(a.scalar_type() == at::kByte && b.scalar_type() == at::kByte, "lowbit: a and b must be uint8 bytes");
  TORCH_CHECK(a_scales.scalar_type() == at::kFloat && b_scales.scalar_type() == at::kFloat,
              "lowbit: the scales must be float32");
  bool fp8 = (a_type == TYPE_E4M3 || a_type == TYPE_E5M2) && (b_type == TYPE_E4M3 || b_type == TYPE_E5M2);
  TORCH_CHECK(fp8 || (a_type == b_type && (a_type == TYPE_INT8 || a_type == TYPE_FP16)),
              "lowbit: a_type and b_type must both be int8, both fp16, or both FP8; got ", a_type, " and ", b_type);
  const int64_t bytes = input_bytes(int(a_type)), m = a.size(0), n = b.size(0), k = a.size(1) / bytes;
  TORCH_CHECK(a.size(1) == b.size(1) && a.size(1) % bytes == 0, "lowbit: a and b must hold rows of the same length");
  TORCH_CHECK(block > 0 && block % 32 == 0 && k % block == 0, "lowbit: block must be a multiple of 32 dividing k");
  TORCH_CHECK(a_type != TYPE_INT8 || block <= INT8_BLOCK_MAX, "lowbit: the int8 instruction takes blocks of at most ",
              int(INT8_BLOCK_MAX), " (its int32 partial sums convert to fp32 exactly only below 2**24); got ", block);
  TORCH_CHECK(a_scales.size(0) == m && a_scales.size(1) == k / block && b_scales.size(0) == n &&
                  b_scales.size(1) == k / block,
              "lowbit: the scales must have one row per row of a (b) and one column per block");
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf,
              "lowbit: out_dtype must be float32, bfloat16 or float16; got ", out_dtype);
  Tensor bias_values;
  if (bias) {
    check_same_device(*bias, "bias", a, "a");
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == n,
                "lowbit: bias must be float32 of shape (", n, ")");
    bias_values = bias->contiguous();
  }
  OnDevice on(a);
  TORCH_CHECK(on.capability() >= 80, "lowbit: mx_matmul needs a GPU of compute capability 8.0 or later (cp.async, "
              "tensor-core MMAs); ", a.device(), " has ", on.capability() / 10, ".", on.capability() % 10);
  TORCH_CHECK(!fp8 || on.capability() >= 89, "lowbit: FP8 operands need a GPU of compute capability 8.9 or later; ",
              a.device(), " has ", on.capability() / 10, ".", on.capability() % 10);
  Tensor av = aligned(a), bv = aligned(b), as = a_scales.contiguous(), bs = b_scales.contiguous();
  Tensor out = at::empty({m, n}, a.options().dtype(out_dtype));
  mx_matmul(int(a_type), int(b_type), av.data_ptr<uint8_t>(), as.data_ptr<float>(), bv.data_ptr<uint8_t>(),
            bs.data_ptr<float>(), bias ? bias_values.data_ptr<float>() : nullptr, out.data_ptr(),
            out_dtype == at::kFloat ? F32 : out_dtype == at::kBFloat16 ? BF16 : F16, m, n, k, int(block),
            on.stream());
  on.launched();
  return out;
}

}  // namespace
}  // namespace lowbit

TORCH_LIBRARY(LOWBIT_OPS, m) {
  m.def("element_quantize(Tensor x, int[] desc, int mode, int overflow, int key, float tiny) -> (Tensor, Tensor)");
  m.def("element_encode(Tensor x, int[] desc, int mode, int overflow, int key, float tiny, int code_bits)"
        " -> (Tensor, Tensor)");
  m.def("element_decode(Tensor codes, int[] desc, int nbits, ScalarType dtype) -> (Tensor, Tensor)");
  m.def("block_quantize(Tensor x, int axis, int[] element, int[] scale, float[] params, int mode, int key,"
        " float tiny) -> (Tensor, Tensor)");
  m.def("block_encode(Tensor x, int axis, int[] element, int[] scale, float[] params, int mode, int key,"
        " float tiny) -> (Tensor, Tensor)");
  m.def("block_decode(Tensor elements, Tensor scales, int[] shape, int axis, int[] element, int[] scale,"
        " float[] params, ScalarType dtype) -> Tensor");
  m.def("microexponent_quantize(Tensor x, int axis, int[] params, int mode, int key, float tiny)"
        " -> (Tensor, Tensor)");
  m.def("microexponent_encode(Tensor x, int axis, int[] params, int mode, int key, float tiny)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("microexponent_decode(Tensor elements, Tensor scales, Tensor subscales, int[] shape, int axis,"
        " int[] params, ScalarType dtype) -> Tensor");
  m.def("codebook_quantize(Tensor x, Tensor table, int mode, int key, float tiny) -> (Tensor, Tensor)");
  m.def("codebook_encode(Tensor x, Tensor table, int mode, int key, float tiny, int code_bits) -> (Tensor, Tensor)");
  m.def("codebook_decode(Tensor codes, Tensor table, int nbits, ScalarType dtype) -> (Tensor, Tensor)");
  m.def("codebook_block_quantize(Tensor x, int axis, Tensor table, int block, int bits, int mode, int key,"
        " float tiny) -> (Tensor, Tensor)");
  m.def("codebook_block_encode(Tensor x, int axis, Tensor table, int block, int bits, int mode, int key,"
        " float tiny) -> (Tensor, Tensor)");
  m.def("codebook_block_decode(Tensor elements, Tensor scales, int[] shape, int axis, Tensor table, int block,"
        " int bits, ScalarType dtype) -> Tensor");
  m.def("mx_prepare(Tensor packed, Tensor scale_codes, Tensor? element_table, Tensor scale_table, int code_bits,"
        " int rows, int k) -> (Tensor, Tensor)");
  m.def("mx_matmul(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, Tensor? bias, int a_type, int b_type,"
        " int block, ScalarType out_dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(LOWBIT_OPS, LOWBIT_DEVICE, m) {
  m.impl("element_quantize", &lowbit::element_quantize_op);
  m.impl("element_encode", &lowbit::element_encode_op);
  m.impl("element_decode", &lowbit::element_decode_op);
  m.impl("block_quantize", &lowbit::block_quantize_op);
  m.impl("block_encode", &lowbit::block_encode_op);
  m.impl("block_decode", &lowbit::block_decode_op);
  m.impl("microexponent_quantize", &lowbit::microexponent_quantize_op);
  m.impl("microexponent_encode", &lowbit::microexponent_encode_op);
  m.impl("microexponent_decode", &lowbit::microexponent_decode_op);
  m.impl("codebook_quantize", &lowbit::codebook_quantize_op);
  m.impl("codebook_encode", &lowbit::codebook_encode_op);
  m.impl("codebook_decode", &lowbit::codebook_decode_op);
  m.impl("codebook_block_quantize", &lowbit::codebook_block_quantize_op);
  m.impl("codebook_block_encode", &lowbit::codebook_block_encode_op);
  m.impl("codebook_block_decode", &lowbit::codebook_block_decode_op);
  m.impl("mx_prepare", &lowbit::mx_prepare_op);
  m.impl("mx_matmul", &lowbit::mx_matmul_op);
}
