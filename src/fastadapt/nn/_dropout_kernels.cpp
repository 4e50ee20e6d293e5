// Inverted dropout (Srivastava et al. 2014, §10: kept values scaled by 1 / (1 - p) in training)
// with a counter-based mask: element i of a dense tensor is kept when word(seed, i), the i-th
// 32-bit word of the SplitMix64 sequence started at `seed` (Steele, Lea & Flood 2014), is at
// least `threshold` (about p * 2^32). Each mask bit depends on (seed, i) alone, so
//   - the backward pass regenerates the mask instead of storing it;
//   - the result does not depend on the number of threads or how the work is split.
// `out[i] = in[i] * (kept ? scale : 0)`, a product as in PyTorch's dropout, so NaN stays NaN.
//
// Tensors are read and written as their flat storage (any non-overlapping dense layout, e.g.
// channels last); `out` gets the layout of `in`. Word i is the low (even i) or high (odd i)
// half of the (i / 2 + 1)-th SplitMix64 output.
#include <torch/extension.h>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kBlock = 512;       // elements per block of generated words
constexpr int64_t kGrainBlocks = 16;  // blocks per thread task, at least

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;  // SplitMix64's increment

// The (index + 1)-th output of SplitMix64 seeded with `seed` (its state advanced index + 1
// times, then mixed by the MurmurHash3-style finaliser of Steele et al.).
inline uint64_t splitmix64(uint64_t seed, uint64_t index) {
  uint64_t z = seed + (index + 1) * kGamma;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// dst[i] = src[i] * (words[i] >= threshold ? kept : 0) for i < n. A function of its own, with
// non-aliasing pointers and the select as a product, so that the compiler vectorises it.
template <typename scalar_t, typename opmath_t>
void mask_block(const scalar_t* __restrict src, scalar_t* __restrict dst,
                const uint32_t* __restrict words, int64_t n, uint32_t threshold, opmath_t kept) {
  for (int64_t i = 0; i < n; ++i) {
    const opmath_t factor = kept * static_cast<opmath_t>(words[i] >= threshold);
    dst[i] = static_cast<scalar_t>(static_cast<opmath_t>(src[i]) * factor);
  }
}

template <typename scalar_t>
void scale_kept(const scalar_t* in, scalar_t* out, int64_t count, uint64_t seed,
                uint32_t threshold, double scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t kept = static_cast<opmath_t>(scale);
  const int64_t blocks = (count + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrainBlocks, [&](int64_t begin, int64_t end) {
    alignas(64) uint64_t draws[kBlock / 2];
    alignas(64) uint32_t words[kBlock];
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kBlock;
      const uint64_t first_draw = static_cast<uint64_t>(first / 2);
      for (int64_t k = 0; k < kBlock / 2; ++k) draws[k] = splitmix64(seed, first_draw + k);
      std::memcpy(words, draws, sizeof(words));  // little endian: low half first
      const int64_t n = std::min(kBlock, count - first);
      mask_block(in + first, out + first, words, n, threshold, kept);
    }
  });
}

at::Tensor dropout_mask_scale(const at::Tensor& input, int64_t seed, int64_t threshold,
                              double scale) {
  TORCH_CHECK(input.device().is_cpu(), "dropout kernel: a CPU tensor is needed");
  TORCH_CHECK(input.is_non_overlapping_and_dense(),
              "dropout kernel: the input must be dense (contiguous in some dimension order)");
  TORCH_CHECK(threshold >= 0 && threshold < (int64_t{1} << 32),
              "dropout kernel: the threshold must be in [0, 2^32)");
  at::Tensor output = at::empty_like(input);  // same strides: dense inputs keep their layout
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "dropout_mask_scale", [&] {
    scale_kept(input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
               input.numel(), static_cast<uint64_t>(seed), static_cast<uint32_t>(threshold),
               scale);
  });
  return output;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dropout_mask_scale", &dropout_mask_scale,
        "input * (kept ? scale : 0), the mask drawn from (seed, element index)");
}
