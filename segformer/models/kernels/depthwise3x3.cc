// 3x3 depthwise convolution (stride 1, zero padding 1, no bias) on NCHW float32, for MindSpore's CPU
// backend as ahead-of-time custom operators (ops.Custom, func_type "aot"; segformer/models/depthwise.py).
// One pass over the map instead of im2col's 9x copy and a batched product: the operation is memory-bound.
// Sums run in the tap order (dy, dx) row-major, as the im2col product does; the weight gradient
// accumulates in double. Planes (forward) and channels (weight gradient) are split over threads started
// per call and joined (OMP_NUM_THREADS of them, else one per core): no OpenMP runtime, whose idle workers
// spin after each parallel region (OMP_WAIT_POLICY's default) and took the cores from MindSpore's own
// kernels in between (b2's demo training step 0.7 -> 1.0 s).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

int configured_threads() {
  static const int threads = [] {
    const char *text = std::getenv("OMP_NUM_THREADS");
    const int requested = text ? std::atoi(text) : 0;
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    return std::max(1, requested > 0 ? requested : cores);
  }();
  return threads;
}

// body(i) for i in [0, count), split into contiguous ranges over threads; `cost` is the work of one item
// (elements touched), so that small calls stay on the calling thread.
template <typename Body>
void parallel_for(int64_t count, int64_t cost, Body body) {
  constexpr int64_t kMinWorkPerThread = 1 << 16;
  const int64_t by_work = std::max<int64_t>(1, count * cost / kMinWorkPerThread);
  const int threads = static_cast<int>(std::min<int64_t>({configured_threads(), count, by_work}));
  auto run = [&](int t) {
    const int64_t begin = count * t / threads, end = count * (t + 1) / threads;
    for (int64_t i = begin; i < end; ++i) body(i);
  };
  std::vector<std::thread> workers;
  for (int t = 1; t < threads; ++t) workers.emplace_back(run, t);
  run(0);
  for (auto &worker : workers) worker.join();
}

// out[y, x] = sum_{dy, dx} w[dy, dx] * in[y + dy - 1, x + dx - 1] for one H x W plane.
void correlate_plane(const float *in, const float *w, float *out, int64_t height, int64_t width,
                     const float *zeros) {
  for (int64_t y = 0; y < height; ++y) {
    const float *rows[3];
    for (int dy = 0; dy < 3; ++dy) {
      const int64_t source = y + dy - 1;
      rows[dy] = (source >= 0 && source < height) ? in + source * width : zeros;
    }
    float *line = out + y * width;
    const float *r0 = rows[0], *r1 = rows[1], *r2 = rows[2];
    if (width == 1) {
      line[0] = w[1] * r0[0] + w[4] * r1[0] + w[7] * r2[0];
      continue;
    }
    line[0] = w[1] * r0[0] + w[2] * r0[1] + w[4] * r1[0] + w[5] * r1[1] + w[7] * r2[0] + w[8] * r2[1];
#pragma omp simd
    for (int64_t x = 1; x < width - 1; ++x) {
      line[x] = w[0] * r0[x - 1] + w[1] * r0[x] + w[2] * r0[x + 1] + w[3] * r1[x - 1] + w[4] * r1[x] +
                w[5] * r1[x + 1] + w[6] * r2[x - 1] + w[7] * r2[x] + w[8] * r2[x + 1];
    }
    const int64_t x = width - 1;
    line[x] = w[0] * r0[x - 1] + w[1] * r0[x] + w[3] * r1[x - 1] + w[4] * r1[x] + w[6] * r2[x - 1] + w[7] * r2[x];
  }
}

// grad[k] += sum_{y, x} dout[y, x] * in[y + dy - 1, x + dx - 1], k = 3 dy + dx, for one plane.
void accumulate_weight_gradient(const float *in, const float *dout, double *grad, int64_t height, int64_t width) {
  for (int64_t y = 0; y < height; ++y) {
    const float *d = dout + y * width;
    for (int dy = 0; dy < 3; ++dy) {
      const int64_t source = y + dy - 1;
      if (source < 0 || source >= height) continue;
      const float *row = in + source * width;
      float left = 0.f, centre = 0.f, right = 0.f;
#pragma omp simd reduction(+ : left)
      for (int64_t x = 1; x < width; ++x) left += d[x] * row[x - 1];
#pragma omp simd reduction(+ : centre)
      for (int64_t x = 0; x < width; ++x) centre += d[x] * row[x];
#pragma omp simd reduction(+ : right)
      for (int64_t x = 0; x < width - 1; ++x) right += d[x] * row[x + 1];
      grad[3 * dy] += left;
      grad[3 * dy + 1] += centre;
      grad[3 * dy + 2] += right;
    }
  }
}

bool is_float32(const char *dtype) { return std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "float") == 0; }

}  // namespace

extern "C" {

// params: map [B, C, H, W], weight [C, 1, 3, 3] -> out [B, C, H, W].
int depthwise3x3_forward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                         void *stream, void *extra) {
  if (nparam != 3 || ndims[0] != 4 || !is_float32(dtypes[0]) || !is_float32(dtypes[1])) return 1;
  const float *in = static_cast<const float *>(params[0]);
  const float *weight = static_cast<const float *>(params[1]);
  float *out = static_cast<float *>(params[2]);
  const int64_t batch = shapes[0][0], channels = shapes[0][1], height = shapes[0][2], width = shapes[0][3];
  const int64_t plane = height * width;
  const std::vector<float> zeros(width, 0.f);
  parallel_for(batch * channels, plane, [&](int64_t p) {
    correlate_plane(in + p * plane, weight + (p % channels) * 9, out + p * plane, height, width, zeros.data());
  });
  return 0;
}

// params: map [B, C, H, W], output gradient [B, C, H, W] -> weight gradient [C, 1, 3, 3].
int depthwise3x3_weight_gradient(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *stream, void *extra) {
  if (nparam != 3 || ndims[0] != 4 || !is_float32(dtypes[0]) || !is_float32(dtypes[1])) return 1;
  const float *in = static_cast<const float *>(params[0]);
  const float *dout = static_cast<const float *>(params[1]);
  float *grad = static_cast<float *>(params[2]);
  const int64_t batch = shapes[0][0], channels = shapes[0][1], height = shapes[0][2], width = shapes[0][3];
  const int64_t plane = height * width;
  parallel_for(channels, batch * plane, [&](int64_t c) {
    double sums[9] = {0};
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t offset = (b * channels + c) * plane;
      accumulate_weight_gradient(in + offset, dout + offset, sums, height, width);
    }
    for (int k = 0; k < 9; ++k) grad[c * 9 + k] = static_cast<float>(sums[k]);
  });
  return 0;
}

}  // extern "C"
