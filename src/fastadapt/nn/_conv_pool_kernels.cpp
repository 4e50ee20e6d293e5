// Fused 3x3 convolution + 2x2 max-pool + ReLU for inputs with few channels (Conv-4's first
// block), forward and backward, without materialising the full-resolution feature maps.
//
// Shapes (all tensors contiguous); the N images form G equal consecutive groups (tasks), each
// convolved with its own weights:
//   padded  [N, C, Hp, Wp]   the zero-padded input;
//   weight  [G, O, C*9]      the (BatchNorm-folded) convolution weights, one row per channel;
//   shift   [G, O]           the bias added to every output;
//   output  [N, Ho, Wo, O]   the pooled maps after the ReLU, channels last; Ho = (Hp - 2) / 2
//                            (floor pooling);
//   argmax  [N, Ho, Wo, O]   uint8: which of the window's 4 positions (row-major) holds the max,
//                            or kInactive where the ReLU zeroes it (max <= 0): no gradient.
//
// At pooled position (i, j) the window's position d = 2 * di + dj sees the patch
// x[c, 2i + di + ki, 2j + dj + kj] (k = 9c + 3ki + kj), so a whole window needs only the
// 4x4 neighbourhood of the input; every kernel reads those 16 pixels per channel once and
// runs over the O output channels innermost, where the compiler vectorises.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "_kernel_vectors.h"

namespace {

using namespace fastadapt_kernels;
constexpr int64_t kTaps = 9;    // 3x3 kernel

struct Geometry {
  int64_t images, channels, padded_height, padded_width, height, width, groups, out_channels,
      taps;

  // The group (task) of the image at pooled row index `row` (n * height + i).
  int64_t group(int64_t row) const { return row / height / (images / groups); }
};

Geometry geometry(const at::Tensor& padded, int64_t groups, int64_t out_channels) {
  TORCH_CHECK(padded.dim() == 4, "padded input must be [N, C, H, W]");
  TORCH_CHECK(padded.size(2) >= 4 && padded.size(3) >= 4, "padded input smaller than 4x4");
  TORCH_CHECK(out_channels % 8 == 0, "the output channels must be a multiple of 8");
  TORCH_CHECK(groups >= 1 && padded.size(0) % groups == 0,
              "the images must split into equal groups, one per weight");
  return {padded.size(0),
          padded.size(1),
          padded.size(2),
          padded.size(3),
          (padded.size(2) - 2) / 2,
          (padded.size(3) - 2) / 2,
          groups,
          out_channels,
          padded.size(1) * kTaps};
}

Geometry geometry(const at::Tensor& padded, const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 3 && weight.size(2) == padded.size(1) * kTaps,
              "weight must be [G, O, C*9] for a 3x3 convolution");
  return geometry(padded, weight.size(0), weight.size(1));
}

// The K patch values of each window position at pooled (i, j): patches[d * K + k].
template <typename scalar_t>
inline void window_patches(const scalar_t* image, const Geometry& g, int64_t i, int64_t j,
                           scalar_t* patches) {
  for (int d = 0; d < kWindow; ++d) {
    const int64_t row = 2 * i + d / 2, col = 2 * j + d % 2;
    for (int64_t c = 0; c < g.channels; ++c) {
      const scalar_t* plane = image + c * g.padded_height * g.padded_width;
      for (int64_t ki = 0; ki < 3; ++ki) {
        for (int64_t kj = 0; kj < 3; ++kj) {
          patches[d * g.taps + c * kTaps + ki * 3 + kj] =
              plane[(row + ki) * g.padded_width + col + kj];
        }
      }
    }
  }
}

// Channel blocks are taken kTile at a time, so that each patch value, once broadcast, feeds
// kTile vector products and a window's kWindow x kTile accumulators stay in registers; the
// channels left over (O not a multiple of kTile blocks) go one block at a time.
constexpr int kTile = 4;

// Calls body(tile, block) for the tiles of channel blocks: tile is a std::integral_constant
// holding the number of blocks (kTile or 1), block the tile's first channel.
template <int64_t kLanes, typename Body>
inline void for_each_tile(int64_t out_channels, const Body& body) {
  int64_t block = 0;
  for (; block + kTile * kLanes <= out_channels; block += kTile * kLanes) {
    body(std::integral_constant<int, kTile>{}, block);
  }
  for (; block < out_channels; block += kLanes) body(std::integral_constant<int, 1>{}, block);
}

// The convolution at the window's 4 positions for a tile of kBlocks channel blocks starting
// at weight_t's first column: acc[d][b] = shift + w . p_d (no shift where shift is null).
template <typename scalar_t, int kBlocks>
inline void convolve_window(const scalar_t* weight_t, const scalar_t* patches,
                            const scalar_t* shift, int64_t taps, int64_t out_channels,
                            typename Lanes<scalar_t>::Value (&acc)[kWindow][kBlocks]) {
  using V = typename Lanes<scalar_t>::Value;
  constexpr int64_t lanes = Lanes<scalar_t>::size;
  for (int b = 0; b < kBlocks; ++b) {
    const V init = shift == nullptr ? V{} : load<V>(shift + b * lanes);
    for (int d = 0; d < kWindow; ++d) acc[d][b] = init;
  }
  for (int64_t k = 0; k < taps; ++k) {
    V w[kBlocks];
    for (int b = 0; b < kBlocks; ++b) w[b] = load<V>(weight_t + k * out_channels + b * lanes);
    for (int d = 0; d < kWindow; ++d) {
      const scalar_t pixel = patches[d * taps + k];
      for (int b = 0; b < kBlocks; ++b) acc[d][b] += w[b] * pixel;
    }
  }
}

// Calls body(row, j, patches, group, offset) for every pooled position of rows [begin, end),
// with the window's patches gathered (see window_patches).
template <typename scalar_t, typename Body>
inline void for_each_window(const scalar_t* x, const Geometry& g, int64_t begin, int64_t end,
                            const Body& body) {
  std::vector<scalar_t> patches(kWindow * g.taps);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / g.height, i = row % g.height;
    const scalar_t* image = x + n * g.channels * g.padded_height * g.padded_width;
    for (int64_t j = 0; j < g.width; ++j) {
      window_patches(image, g, i, j, patches.data());
      body(patches.data(), g.group(row), (row * g.width + j) * g.out_channels);
    }
  }
}

std::vector<at::Tensor> conv_pool_forward(const at::Tensor& padded_in, const at::Tensor& weight_in,
                                          const at::Tensor& shift_in) {
  const at::Tensor padded = padded_in.contiguous();
  const at::Tensor weight_t = weight_in.transpose(1, 2).contiguous();  // [G, K, O]
  const at::Tensor shift = shift_in.contiguous();
  const Geometry g = geometry(padded, weight_in);
  TORCH_CHECK(shift.numel() == g.groups * g.out_channels, "shift must be [G, O]");
  at::Tensor output = at::empty({g.images, g.height, g.width, g.out_channels}, padded.options());
  at::Tensor argmax =
      at::empty({g.images, g.height, g.width, g.out_channels}, padded.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES(padded.scalar_type(), "conv_pool_forward", [&] {
    using L = Lanes<scalar_t>;
    const scalar_t* w = weight_t.data_ptr<scalar_t>();
    const scalar_t* b = shift.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    uint8_t* arg = argmax.data_ptr<uint8_t>();
    at::parallel_for(0, g.images * g.height, 1, [&](int64_t begin, int64_t end) {
      for_each_window(padded.data_ptr<scalar_t>(), g, begin, end,
                      [&](const scalar_t* patches, int64_t group, int64_t offset) {
        const scalar_t* w_g = w + group * g.taps * g.out_channels;
        const scalar_t* b_g = b + group * g.out_channels;
        for_each_tile<L::size>(g.out_channels, [&](auto tile, int64_t block) {
          constexpr int kBlocks = decltype(tile)::value;
          typename L::Value acc[kWindow][kBlocks];
          convolve_window(w_g + block, patches, b_g + block, g.taps, g.out_channels, acc);
          for (int b = 0; b < kBlocks; ++b) {
            const typename L::Value window[kWindow] = {acc[0][b], acc[1][b], acc[2][b],
                                                       acc[3][b]};
            const int64_t at = offset + block + b * L::size;
            store_pooled(window, out + at, arg + at);
          }
        });
      });
    });
  });
  return {output, argmax};
}

// The convolution (no shift) evaluated only at each output's argmax position, 0 where the ReLU
// zeroed the output: out[n, i, j, o] = w_o . p_{argmax[n, i, j, o]}(i, j); linear in the weight.
at::Tensor conv_at_argmax(const at::Tensor& padded_in, const at::Tensor& weight_in,
                          const at::Tensor& argmax_in) {
  const at::Tensor padded = padded_in.contiguous();
  const at::Tensor weight_t = weight_in.transpose(1, 2).contiguous();  // [G, K, O]
  const at::Tensor argmax = argmax_in.contiguous();
  const Geometry g = geometry(padded, weight_in);
  at::Tensor output = at::empty({g.images, g.height, g.width, g.out_channels}, padded.options());
  AT_DISPATCH_FLOATING_TYPES(padded.scalar_type(), "conv_at_argmax", [&] {
    using L = Lanes<scalar_t>;
    const scalar_t* w = weight_t.data_ptr<scalar_t>();
    const uint8_t* arg = argmax.data_ptr<uint8_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    at::parallel_for(0, g.images * g.height, 1, [&](int64_t begin, int64_t end) {
      for_each_window(padded.data_ptr<scalar_t>(), g, begin, end,
                      [&](const scalar_t* patches, int64_t group, int64_t offset) {
        const scalar_t* w_g = w + group * g.taps * g.out_channels;
        for_each_tile<L::size>(g.out_channels, [&](auto tile, int64_t block) {
          constexpr int kBlocks = decltype(tile)::value;
          typename L::Value acc[kWindow][kBlocks];
          convolve_window<scalar_t, kBlocks>(w_g + block, patches, nullptr, g.taps,
                                             g.out_channels, acc);
          for (int b = 0; b < kBlocks; ++b) {
            const int64_t at = offset + block + b * L::size;
            const auto which = load_argmax<scalar_t>(arg + at);
            typename L::Value result = {};
            for (int d = 0; d < kWindow; ++d) result = which == d ? acc[d][b] : result;
            store(out + at, result);
          }
        });
      });
    });
  });
  return output;
}

// The gradients of conv_pool_forward's output with respect to each group's weight and shift:
// grad_weight[g, o, k] = sum over the group's active (n, i, j) of grad[n, i, j, o] *
// p_{argmax}(i, j)[k], grad_shift[g, o] = sum of grad[..., o] over them. Linear in grad
// (conv_at_argmax's adjoint). Each thread sums a fixed slice of rows into its own
// accumulators, so the result does not depend on scheduling.
std::vector<at::Tensor> conv_pool_weight_grad(const at::Tensor& grad_in,
                                              const at::Tensor& padded_in,
                                              const at::Tensor& argmax_in, int64_t groups) {
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor padded = padded_in.contiguous();
  const at::Tensor argmax = argmax_in.contiguous();
  const int64_t out_channels = grad.size(3);
  const Geometry g = geometry(padded, groups, out_channels);
  TORCH_CHECK(grad.sizes() == argmax.sizes() && grad.size(0) == g.images &&
                  grad.size(1) == g.height && grad.size(2) == g.width,
              "grad and argmax must both be [N, Ho, Wo, O]");
  const int64_t rows = g.images * g.height;
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  at::Tensor partial = at::zeros({slices, groups, g.taps + 1, out_channels}, padded.options());
  AT_DISPATCH_FLOATING_TYPES(padded.scalar_type(), "conv_pool_weight_grad", [&] {
    using L = Lanes<scalar_t>;
    using V = typename L::Value;
    const scalar_t* gy = grad.data_ptr<scalar_t>();
    const uint8_t* arg = argmax.data_ptr<uint8_t>();
    scalar_t* sums = partial.data_ptr<scalar_t>();
    at::parallel_for(0, slices, 1, [&](int64_t first, int64_t last) {
      for (int64_t slice = first; slice < last; ++slice) {
        for_each_window(padded.data_ptr<scalar_t>(), g, rows * slice / slices,
                        rows * (slice + 1) / slices,
                        [&](const scalar_t* patches, int64_t group, int64_t offset) {
          scalar_t* acc = sums + (slice * groups + group) * (g.taps + 1) * out_channels;
          for_each_tile<L::size>(out_channels, [&](auto tile, int64_t block) {
            constexpr int kBlocks = decltype(tile)::value;
            V routed[kWindow][kBlocks];  // the gradient where position d held the max, else 0
            for (int b = 0; b < kBlocks; ++b) {
              const int64_t at = offset + block + b * L::size;
              const V gr = load<V>(gy + at);
              const auto which = load_argmax<scalar_t>(arg + at);
              for (int d = 0; d < kWindow; ++d) routed[d][b] = which == d ? gr : V{};
              scalar_t* shift_acc = acc + g.taps * out_channels + block + b * L::size;
              store(shift_acc, load<V>(shift_acc) + (which == kInactive ? V{} : gr));
            }
            for (int64_t k = 0; k < g.taps; ++k) {
              scalar_t* weight_acc = acc + k * out_channels + block;
              V sum[kBlocks];
              for (int b = 0; b < kBlocks; ++b) sum[b] = load<V>(weight_acc + b * L::size);
              for (int d = 0; d < kWindow; ++d) {
                const scalar_t pixel = patches[d * g.taps + k];
                for (int b = 0; b < kBlocks; ++b) sum[b] += routed[d][b] * pixel;
              }
              for (int b = 0; b < kBlocks; ++b) store(weight_acc + b * L::size, sum[b]);
            }
          });
        });
      }
    });
  });
  at::Tensor total = partial.sum(0);  // [G, K + 1, O]
  return {total.narrow(1, 0, g.taps).transpose(1, 2).contiguous(),
          total.select(1, g.taps).contiguous()};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conv_pool_forward", &conv_pool_forward,
        "3x3 convolution + 2x2 max-pool + ReLU, channels last");
  m.def("conv_at_argmax", &conv_at_argmax, "the convolution at each output's argmax position");
  m.def("conv_pool_weight_grad", &conv_pool_weight_grad, "weight and shift gradients");
}
