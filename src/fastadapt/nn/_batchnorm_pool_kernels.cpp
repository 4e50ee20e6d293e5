// BatchNorm with batch statistics, then a 2x2 max-pool and a ReLU, over channels-last maps
// (Conv-4's blocks after the first), forward and backward, without writing the normalised maps.
//
// Shapes (all tensors contiguous):
//   y        [N, H, W, C]     the convolution's output, channels last;
//   gamma    [C], beta [C]    BatchNorm's affine parameters;
//   output   [N, Ho, Wo, C]   relu(max over each 2x2 window of gamma * (y - mean) * invstd + beta),
//                             Ho = H / 2, Wo = W / 2 (floor pooling);
//   argmax   [N, Ho, Wo, C]   uint8: which of the window's 4 positions (row-major) holds the max,
//                             or kInactive where the ReLU zeroes it (max <= 0);
//   mean, invstd [C]          the batch statistics over all N * H * W positions (biased
//                             variance, as BatchNorm normalises with in training).
//
// Backward (Ioffe & Szegedy 2015, the gradient of their Algorithm 1): with g the gradient
// routed to the normalised map (the pooled gradient at each argmax, 0 elsewhere), M = N * H * W
// and x = (y - mean) * invstd,
//   dbeta = sum g,  dgamma = sum g x,
//   dy = gamma * invstd * (g - dbeta / M - x * dgamma / M).
// Channels run innermost, one vector at a time (C must be a multiple of 8).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "_kernel_vectors.h"

namespace {

using namespace fastadapt_kernels;

struct Maps {
  int64_t images, height, width, channels, pooled_height, pooled_width;

  int64_t positions() const { return images * height * width; }
  // Offset of y[n, h, w, 0] and of output[n, i, j, 0].
  int64_t at(int64_t n, int64_t h, int64_t w) const {
    return ((n * height + h) * width + w) * channels;
  }
  int64_t pooled_at(int64_t n, int64_t i, int64_t j) const {
    return ((n * pooled_height + i) * pooled_width + j) * channels;
  }
  // Offset of y at position d (row-major) of the pooling window of output (n, i, j).
  int64_t window_at(int64_t n, int64_t i, int64_t j, int d) const {
    return at(n, 2 * i + d / 2, 2 * j + d % 2);
  }
};

Maps maps(const at::Tensor& y) {
  TORCH_CHECK(y.dim() == 4, "y must be [N, H, W, C]");
  TORCH_CHECK(y.size(1) >= 2 && y.size(2) >= 2, "maps smaller than the 2x2 pooling window");
  TORCH_CHECK(y.size(3) % 8 == 0, "the channels must be a multiple of 8");
  return {y.size(0), y.size(1), y.size(2), y.size(3), y.size(1) / 2, y.size(2) / 2};
}

// Per-channel sums over positions [0, count) of body(position, channel) in double precision,
// each thread over a fixed slice of positions, so the result does not depend on scheduling.
template <typename Body>
std::vector<double> channel_sums(int64_t count, int64_t channels, int64_t sums_per_channel,
                                 const Body& body) {
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
  std::vector<double> partial(slices * sums_per_channel * channels, 0.0);
  at::parallel_for(0, slices, 1, [&](int64_t first, int64_t last) {
    for (int64_t slice = first; slice < last; ++slice) {
      double* acc = partial.data() + slice * sums_per_channel * channels;
      for (int64_t p = count * slice / slices; p < count * (slice + 1) / slices; ++p) {
        body(p, acc);
      }
    }
  });
  std::vector<double> total(sums_per_channel * channels, 0.0);
  for (int64_t slice = 0; slice < slices; ++slice) {
    for (int64_t i = 0; i < sums_per_channel * channels; ++i) {
      total[i] += partial[slice * sums_per_channel * channels + i];
    }
  }
  return total;
}

std::vector<at::Tensor> batchnorm_pool_forward(const at::Tensor& y_in, const at::Tensor& gamma_in,
                                               const at::Tensor& beta_in, double eps) {
  const at::Tensor y = y_in.contiguous();
  const Maps m = maps(y);
  const at::Tensor gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  TORCH_CHECK(gamma.numel() == m.channels && beta.numel() == m.channels,
              "gamma and beta must have one value per channel");
  at::Tensor output = at::empty({m.images, m.pooled_height, m.pooled_width, m.channels},
                                y.options());
  at::Tensor argmax = at::empty_like(output, y.options().dtype(at::kByte));
  at::Tensor mean = at::empty({m.channels}, y.options());
  at::Tensor invstd = at::empty({m.channels}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "batchnorm_pool_forward", [&] {
    const scalar_t* in = y.data_ptr<scalar_t>();
    const int64_t C = m.channels;
    using L = Lanes<scalar_t>;
    using Wide = typename L::Wide;
    const std::vector<double> sums =
        channel_sums(m.positions(), C, 2, [&](int64_t p, double* acc) {
          const scalar_t* row = in + p * C;
          for (int64_t c = 0; c < C; c += L::size) {
            const Wide value = __builtin_convertvector(load<typename L::Value>(row + c), Wide);
            store(acc + c, load<Wide>(acc + c) + value);
            store(acc + C + c, load<Wide>(acc + C + c) + value * value);
          }
        });
    std::vector<scalar_t> scale(C), shift(C);
    scalar_t* mu = mean.data_ptr<scalar_t>();
    scalar_t* inv = invstd.data_ptr<scalar_t>();
    const scalar_t* gm = gamma.data_ptr<scalar_t>();
    const scalar_t* bt = beta.data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      const double average = sums[c] / m.positions();
      const double variance = std::max(0.0, sums[C + c] / m.positions() - average * average);
      mu[c] = static_cast<scalar_t>(average);
      inv[c] = static_cast<scalar_t>(1.0 / std::sqrt(variance + eps));
      scale[c] = gm[c] * inv[c];
      shift[c] = bt[c] - scale[c] * mu[c];
    }
    scalar_t* out = output.data_ptr<scalar_t>();
    uint8_t* arg = argmax.data_ptr<uint8_t>();
    at::parallel_for(0, m.images * m.pooled_height, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / m.pooled_height, i = row % m.pooled_height;
        for (int64_t j = 0; j < m.pooled_width; ++j) {
          const scalar_t* window[kWindow];
          for (int d = 0; d < kWindow; ++d) window[d] = in + m.window_at(n, i, j, d);
          const int64_t at = m.pooled_at(n, i, j);
          for (int64_t c = 0; c < C; c += L::size) {
            const auto a = load<typename L::Value>(scale.data() + c);
            const auto b = load<typename L::Value>(shift.data() + c);
            typename L::Value normalised[kWindow];
            for (int d = 0; d < kWindow; ++d) {
              normalised[d] = a * load<typename L::Value>(window[d] + c) + b;
            }
            store_pooled(normalised, out + at + c, arg + at + c);
          }
        }
      }
    });
  });
  return {output, argmax, mean, invstd};
}

std::vector<at::Tensor> batchnorm_pool_backward(const at::Tensor& grad_in, const at::Tensor& y_in,
                                                const at::Tensor& argmax_in,
                                                const at::Tensor& gamma_in,
                                                const at::Tensor& mean_in,
                                                const at::Tensor& invstd_in) {
  const at::Tensor grad = grad_in.contiguous(), y = y_in.contiguous();
  const at::Tensor argmax = argmax_in.contiguous(), gamma = gamma_in.contiguous();
  const at::Tensor mean = mean_in.contiguous(), invstd = invstd_in.contiguous();
  const Maps m = maps(y);
  TORCH_CHECK(grad.sizes() == argmax.sizes() && grad.size(0) == m.images &&
                  grad.size(1) == m.pooled_height && grad.size(2) == m.pooled_width &&
                  grad.size(3) == m.channels,
              "grad and argmax must both be [N, H / 2, W / 2, C]");
  at::Tensor grad_y = at::empty_like(y);
  at::Tensor grad_gamma = at::empty({m.channels}, y.options());
  at::Tensor grad_beta = at::empty({m.channels}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "batchnorm_pool_backward", [&] {
    const scalar_t* in = y.data_ptr<scalar_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const uint8_t* arg = argmax.data_ptr<uint8_t>();
    const scalar_t* mu = mean.data_ptr<scalar_t>();
    const scalar_t* inv = invstd.data_ptr<scalar_t>();
    const scalar_t* gm = gamma.data_ptr<scalar_t>();
    const int64_t C = m.channels;
    // dbeta and dgamma from the pooled gradient and y at each argmax.
    const int64_t pooled = m.images * m.pooled_height * m.pooled_width;
    using L = Lanes<scalar_t>;
    using V = typename L::Value;
    using Wide = typename L::Wide;
    const std::vector<double> sums = channel_sums(pooled, C, 2, [&](int64_t p, double* acc) {
      const int64_t j = p % m.pooled_width, i = p / m.pooled_width % m.pooled_height,
                    n = p / m.pooled_width / m.pooled_height;
      const scalar_t* window[kWindow];
      for (int d = 0; d < kWindow; ++d) window[d] = in + m.window_at(n, i, j, d);
      for (int64_t c = 0; c < C; c += L::size) {
        const auto which = load_argmax<scalar_t>(arg + p * C + c);
        V value = {};  // y at the argmax
        for (int d = 0; d < kWindow; ++d) value = which == d ? load<V>(window[d] + c) : value;
        const V routed = which == kInactive ? V{} : load<V>(g + p * C + c);
        const V normalised = (value - load<V>(mu + c)) * load<V>(inv + c);
        store(acc + c, load<Wide>(acc + c) + __builtin_convertvector(routed, Wide));
        store(acc + C + c,
              load<Wide>(acc + C + c) + __builtin_convertvector(routed * normalised, Wide));
      }
    });
    // dy = a * g + b + k * y per channel.
    std::vector<scalar_t> a(C), b(C), k(C);
    scalar_t* dgamma = grad_gamma.data_ptr<scalar_t>();
    scalar_t* dbeta = grad_beta.data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      dbeta[c] = static_cast<scalar_t>(sums[c]);
      dgamma[c] = static_cast<scalar_t>(sums[C + c]);
      const double slope = static_cast<double>(gm[c]) * inv[c];
      const double mean_g = sums[c] / m.positions(), mean_gx = sums[C + c] / m.positions();
      a[c] = static_cast<scalar_t>(slope);
      k[c] = static_cast<scalar_t>(-slope * mean_gx * inv[c]);
      b[c] = static_cast<scalar_t>(-slope * mean_g + slope * mean_gx * inv[c] * mu[c]);
    }
    scalar_t* dy = grad_y.data_ptr<scalar_t>();
    at::parallel_for(0, m.images * m.height, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / m.height, h = row % m.height, i = h / 2;
        for (int64_t w = 0; w < m.width; ++w) {
          const scalar_t* yy = in + m.at(n, h, w);
          scalar_t* out = dy + m.at(n, h, w);
          for (int64_t c = 0; c < C; c += L::size) {
            store(out + c, load<V>(b.data() + c) + load<V>(k.data() + c) * load<V>(yy + c));
          }
          const int64_t j = w / 2;
          if (i >= m.pooled_height || j >= m.pooled_width) continue;  // dropped by the pool
          const int here = 2 * (h % 2) + w % 2;
          const int64_t at = m.pooled_at(n, i, j);
          for (int64_t c = 0; c < C; c += L::size) {
            const auto which = load_argmax<scalar_t>(arg + at + c);
            const V routed = which == here ? load<V>(a.data() + c) * load<V>(g + at + c) : V{};
            store(out + c, load<V>(out + c) + routed);
          }
        }
      }
    });
  });
  return {grad_y, grad_gamma, grad_beta};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("batchnorm_pool_forward", &batchnorm_pool_forward,
        "BatchNorm (batch statistics) + 2x2 max-pool + ReLU, channels last");
  m.def("batchnorm_pool_backward", &batchnorm_pool_backward,
        "gradients of batchnorm_pool_forward with respect to y, gamma and beta");
}
