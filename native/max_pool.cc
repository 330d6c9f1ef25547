// The max pool and its backward, optionally with the ReLU before the pool, as XLA FFI handlers:
// the maps `max_pool` and `max_scatter` of fcnn/ops/pool.py, whose docstring has the maths and
// the tie rule.
//
//   fcnn_max_pool_fwd   (x) -> y              x (N, H, W, C), y (N, H_out, W_out, C), float32
//       y = each window's maximum (a padded cell reading -inf), a NaN if the window holds one;
//       with `relu`, then y <= 0 -> 0 (a NaN stays). XLA's own max reductions on the CPU are
//       not used for this: fused into YNNPACK they return the largest number of a window
//       holding a NaN (docs/correctness.md).
//   fcnn_max_pool_bwd   (x, g) -> dx          x (N, H, W, C), g (N, H_out, W_out, C), float32
//       Each window of x (row-major taps, a padded cell reading -inf) has its first maximum t:
//       a tap wins over the best so far when it is not <= it and the best is not NaN, so a NaN
//       beats every number and never a NaN before it, and of equal values the first stays.
//       dx[t] += g for that window; every other cell of dx gets 0. With `relu` (the pool of
//       ReLU's output, relu(max_pool(x)) = max_pool(relu(x))), g is first masked by the pooled
//       value: 0 where x[t] <= 0 (that window's ReLU passed nothing on), g elsewhere, a NaN
//       included.
//
// Split over the images on XLA's threads (pieces.h). Windows that do not overlap (stride >=
// window, the 2x2/2 pools) write each covered cell once, g or 0, and zero only the cells no
// window covers; overlapping windows zero the image and add. The per-window loops run over the
// C channels of a cell, compiled for AVX-512, AVX2 and baseline x86-64 (GCC's target_clones).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "pieces.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using fcnn_native::ForEachPiece;
using fcnn_native::PieceCount;

using F32R4 = ffi::Buffer<ffi::F32, 4>;
using F32R4Out = ffi::ResultBuffer<ffi::F32, 4>;
using I64Span = ffi::Span<const int64_t>;

#define FCNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

struct Pool {
  int64_t h, w, c, oh, ow, kh, kw, sh, sw, ph, pw;
  bool relu;
};

// best/index of the first maximum over the window's taps (tap t's C values at taps[t]), then
// gm = g masked by the pooled value when `relu`.
FCNN_CLONES void FirstMax(const float* const* taps, int64_t count, int64_t C,
                          const float* __restrict g, bool relu, float* __restrict best,
                          float* __restrict gm, int32_t* __restrict index) {
  std::memcpy(best, taps[0], C * sizeof(float));
  std::fill(index, index + C, 0);
  for (int64_t t = 1; t < count; ++t) {
    const float* __restrict v = taps[t];
    const int32_t tt = static_cast<int32_t>(t);
    for (int64_t c = 0; c < C; ++c) {
      const float b = best[c], x = v[c];
      const bool wins = !(x <= b) & (b == b);
      best[c] = wins ? x : b;
      index[c] = wins ? tt : index[c];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    gm[c] = (relu & (best[c] <= 0.f)) ? 0.f : g[c];
  }
}

// The window's maximum (NaN if any tap is NaN), ReLU'd for `relu`.
FCNN_CLONES void WindowMax(const float* const* taps, int64_t count, int64_t C, bool relu,
                           float* __restrict y) {
  std::memcpy(y, taps[0], C * sizeof(float));
  for (int64_t t = 1; t < count; ++t) {
    const float* __restrict v = taps[t];
    for (int64_t c = 0; c < C; ++c) {
      const float b = y[c], x = v[c];
      y[c] = (!(x <= b) & (b == b)) ? x : b;
    }
  }
  if (relu) {
    for (int64_t c = 0; c < C; ++c) y[c] = y[c] <= 0.f ? 0.f : y[c];
  }
}

// Windows that do not overlap: each tap's cell gets gm where the tap is the maximum, else 0.
FCNN_CLONES void WriteTaps(float* const* cells, int64_t count, int64_t C,
                           const float* __restrict gm, const int32_t* __restrict index) {
  for (int64_t t = 0; t < count; ++t) {
    float* __restrict d = cells[t];
    if (d == nullptr) continue;  // a padded cell
    const int32_t tt = static_cast<int32_t>(t);
    for (int64_t c = 0; c < C; ++c) d[c] = index[c] == tt ? gm[c] : 0.f;
  }
}

// Overlapping windows: gm added at each channel's maximum (a padded cell's go to `sink`).
void AddAtMax(float* const* cells, int64_t C, const float* gm, const int32_t* index) {
  for (int64_t c = 0; c < C; ++c) cells[index[c]][c] += gm[c];
}

void ForwardImage(const Pool& p, const float* x, float* y) {
  const int64_t C = p.c, count = p.kh * p.kw;
  thread_local std::vector<float> minus_inf;
  thread_local std::vector<const float*> taps;
  minus_inf.assign(C, -std::numeric_limits<float>::infinity());
  taps.resize(count);
  for (int64_t i = 0; i < p.oh; ++i) {
    for (int64_t j = 0; j < p.ow; ++j) {
      for (int64_t a = 0; a < p.kh; ++a) {
        const int64_t r = i * p.sh - p.ph + a;
        for (int64_t b = 0; b < p.kw; ++b) {
          const int64_t q = j * p.sw - p.pw + b;
          const bool inside = r >= 0 && r < p.h && q >= 0 && q < p.w;
          taps[a * p.kw + b] = inside ? x + (r * p.w + q) * C : minus_inf.data();
        }
      }
      WindowMax(taps.data(), count, C, p.relu, y + (i * p.ow + j) * C);
    }
  }
}

void Image(const Pool& p, const float* x, const float* g, float* dx) {
  const int64_t C = p.c, count = p.kh * p.kw;
  const bool overlap = p.sh < p.kh || p.sw < p.kw;
  thread_local std::vector<float> minus_inf, sink, best, gm;
  thread_local std::vector<int32_t> index;
  thread_local std::vector<const float*> taps;
  thread_local std::vector<float*> cells;
  minus_inf.assign(C, -std::numeric_limits<float>::infinity());
  sink.assign(C, 0.f);
  best.resize(C);
  gm.resize(C);
  index.resize(C);
  taps.resize(count);
  cells.resize(count);
  if (overlap) {
    std::memset(dx, 0, sizeof(float) * p.h * p.w * C);
  } else {  // zero the cells no window covers (rows or columns outside every window)
    std::vector<char> row(p.h, 0), col(p.w, 0);
    for (int64_t i = 0; i < p.oh; ++i) {
      for (int64_t a = 0; a < p.kh; ++a) {
        const int64_t r = i * p.sh - p.ph + a;
        if (r >= 0 && r < p.h) row[r] = 1;
      }
    }
    for (int64_t j = 0; j < p.ow; ++j) {
      for (int64_t b = 0; b < p.kw; ++b) {
        const int64_t q = j * p.sw - p.pw + b;
        if (q >= 0 && q < p.w) col[q] = 1;
      }
    }
    for (int64_t r = 0; r < p.h; ++r) {
      float* line = dx + r * p.w * C;
      if (!row[r]) {
        std::memset(line, 0, sizeof(float) * p.w * C);
        continue;
      }
      for (int64_t q = 0; q < p.w; ++q) {
        if (!col[q]) std::memset(line + q * C, 0, sizeof(float) * C);
      }
    }
  }
  for (int64_t i = 0; i < p.oh; ++i) {
    for (int64_t j = 0; j < p.ow; ++j) {
      for (int64_t a = 0; a < p.kh; ++a) {
        const int64_t r = i * p.sh - p.ph + a;
        for (int64_t b = 0; b < p.kw; ++b) {
          const int64_t q = j * p.sw - p.pw + b;
          const bool inside = r >= 0 && r < p.h && q >= 0 && q < p.w;
          const int64_t t = a * p.kw + b, at = (r * p.w + q) * C;
          taps[t] = inside ? x + at : minus_inf.data();
          cells[t] = inside ? dx + at : (overlap ? sink.data() : nullptr);
        }
      }
      const float* gw = g + (i * p.ow + j) * C;
      FirstMax(taps.data(), count, C, gw, p.relu, best.data(), gm.data(), index.data());
      if (overlap) {
        AddAtMax(cells.data(), C, gm.data(), index.data());
      } else {
        WriteTaps(cells.data(), count, C, gm.data(), index.data());
      }
    }
  }
}

ffi::Error MakePool(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> yd, I64Span window,
                    I64Span strides, I64Span padding, int64_t relu, Pool* p) {
  if (window.size() != 2 || strides.size() != 2 || padding.size() != 4 || xd[0] != yd[0] ||
      xd[3] != yd[3] || window[0] < 1 || window[1] < 1 || strides[0] < 1 || strides[1] < 1) {
    return ffi::Error::InvalidArgument("fcnn max_pool: operand shapes or attributes");
  }
  *p = Pool{xd[1], xd[2], xd[3], yd[1], yd[2], window[0], window[1],
            strides[0], strides[1], padding[0], padding[2], relu != 0};
  return ffi::Error::Success();
}

ffi::Error MaxPoolFwdImpl(ffi::ThreadPool pool, F32R4 x, F32R4Out y, I64Span window,
                          I64Span strides, I64Span padding, int64_t relu) {
  Pool p;
  if (auto err = MakePool(x.dimensions(), y->dimensions(), window, strides, padding, relu, &p);
      !err.success()) {
    return err;
  }
  const int64_t n = x.dimensions()[0], in = p.h * p.w * p.c, out = p.oh * p.ow * p.c;
  if (out == 0 || n == 0) return ffi::Error::Success();
  const float* xs = x.typed_data();
  float* ys = y->typed_data();
  return ForEachPiece(pool, n, PieceCount(pool, n), [&](int64_t, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) ForwardImage(p, xs + i * in, ys + i * out);
  });
}

ffi::Error MaxPoolBwdImpl(ffi::ThreadPool pool, F32R4 x, F32R4 g, F32R4Out dx, I64Span window,
                          I64Span strides, I64Span padding, int64_t relu) {
  if (dx->element_count() != x.element_count()) {
    return ffi::Error::InvalidArgument("fcnn max_pool backward: dx's shape");
  }
  Pool p;
  if (auto err = MakePool(x.dimensions(), g.dimensions(), window, strides, padding, relu, &p);
      !err.success()) {
    return err;
  }
  if (dx->element_count() == 0) return ffi::Error::Success();
  const int64_t n = x.dimensions()[0], in = p.h * p.w * p.c, out = p.oh * p.ow * p.c;
  const float* xs = x.typed_data();
  const float* gs = g.typed_data();
  float* ds = dx->typed_data();
  if (out == 0) {
    std::memset(ds, 0, dx->size_bytes());
    return ffi::Error::Success();
  }
  return ForEachPiece(pool, n, PieceCount(pool, n), [&](int64_t, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) Image(p, xs + i * in, gs + i * out, ds + i * in);
  });
}

}  // namespace

#define FCNN_EXPORT __attribute__((visibility("default")))
extern "C" {
FCNN_EXPORT XLA_FFI_Error* OnednnMaxPoolFwd(XLA_FFI_CallFrame*);
FCNN_EXPORT XLA_FFI_Error* OnednnMaxPoolBwd(XLA_FFI_CallFrame*);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnMaxPoolFwd, MaxPoolFwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32R4>()     // x
                                  .Ret<F32R4>()     // y
                                  .Attr<I64Span>("window")
                                  .Attr<I64Span>("strides")
                                  .Attr<I64Span>("padding")  // (top, bottom, left, right)
                                  .Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnMaxPoolBwd, MaxPoolBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32R4>()     // x
                                  .Arg<F32R4>()     // g
                                  .Ret<F32R4>()     // dx
                                  .Attr<I64Span>("window")
                                  .Attr<I64Span>("strides")
                                  .Attr<I64Span>("padding")  // (top, bottom, left, right)
                                  .Attr<int64_t>("relu"));
