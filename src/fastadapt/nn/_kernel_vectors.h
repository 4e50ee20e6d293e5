// Vector types and unaligned loads and stores shared by fastadapt's fused CPU kernels.
//
// Channels are processed in blocks of one 32-byte vector (8 floats or 4 doubles, GCC's and
// Clang's vector extensions), so the kernels take channel counts that are multiples of 8.
#pragma once

#include <cstdint>
#include <cstring>

namespace fastadapt_kernels {

constexpr int kWindow = 4;          // 2x2 pooling window, positions numbered row-major
constexpr int kInactive = kWindow;  // the argmax byte of an output the ReLU zeroed

template <typename scalar_t>
struct Lanes;

template <>
struct Lanes<float> {
  typedef float Value __attribute__((vector_size(32)));
  typedef int32_t Mask __attribute__((vector_size(32)));
  typedef uint8_t Bytes __attribute__((vector_size(8)));
  typedef double Wide __attribute__((vector_size(64)));  // the lanes in double precision
  static constexpr int64_t size = 8;
};

template <>
struct Lanes<double> {
  typedef double Value __attribute__((vector_size(32)));
  typedef int64_t Mask __attribute__((vector_size(32)));
  typedef uint8_t Bytes __attribute__((vector_size(4)));
  typedef double Wide __attribute__((vector_size(32)));
  static constexpr int64_t size = 4;
};

template <typename T, typename Element>
inline T load(const Element* from) {
  T value;
  std::memcpy(&value, from, sizeof value);
  return value;
}

template <typename T, typename Element>
inline void store(Element* to, const T& value) {
  std::memcpy(to, &value, sizeof value);
}

// The argmax bytes of one vector of channels, widened to a mask vector.
template <typename scalar_t>
inline typename Lanes<scalar_t>::Mask load_argmax(const uint8_t* from) {
  return __builtin_convertvector(load<typename Lanes<scalar_t>::Bytes>(from),
                                 typename Lanes<scalar_t>::Mask);
}

// The 2x2 max-pool and the ReLU after it over one vector of channels, from the window's four
// values: the first maximum wins and NaN propagates, as in at::max_pool2d; the ReLU passes NaN
// and its gradient at 0 is 0, as in at::relu and threshold_backward. Stores the output and the
// argmax byte (kInactive where the ReLU zeroed the output).
template <typename scalar_t>
inline void store_pooled(const typename Lanes<scalar_t>::Value (&window)[kWindow], scalar_t* out,
                         uint8_t* argmax) {
  using L = Lanes<scalar_t>;
  typename L::Value best = window[0];
  typename L::Mask which = {};
  for (int d = 1; d < kWindow; ++d) {
    const typename L::Mask take = (window[d] > best) | (window[d] != window[d]);
    best = take ? window[d] : best;
    which = take ? typename L::Mask{} + d : which;
  }
  const typename L::Mask active = (best > 0) | (best != best);
  which = active ? which : typename L::Mask{} + kInactive;
  store(out, active ? best : typename L::Value{});
  store(argmax, __builtin_convertvector(which, typename L::Bytes));
}

}  // namespace fastadapt_kernels
