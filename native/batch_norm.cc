// Training-mode batch norm with an optional ReLU after it, as XLA FFI handlers: the forward and
// the cotangent map of fcnn/ops/_batch_norm.py, whose docstring has the maths. x is read as rows
// of C channels (the last axis; every other axis is a row), float32.
//
//   fcnn_batch_norm_fwd   (x, gamma, beta, r) -> (y, mean, var)
//       mean = sum_R x / M (in double), var = sum_R (x - mean)^2 / M (biased; per chunk about
//       the chunk's own mean, chunks merged by Chan et al.'s formula, in double),
//       y = act((x - mean) * gamma / sqrt(var + eps) + beta + r), act = ReLU (v <= 0 -> 0, a
//       NaN stays NaN) or the identity; r, the residual, zero-sized when there is none.
//   fcnn_batch_norm_bwd   (g, x, y, gamma, mean, var, gmean, gvar) -> (dx, dgamma, dbeta, dr)
//       g' = m ⊙ g (m = 0 where y <= 0, for ReLU; y is zero-sized for the identity),
//       dbeta = sum_R g', dgamma = r sum_R g' (x - mean), r = 1 / sqrt(var + eps),
//       dx = k1 g' + k2 (x - mean) + k3 with, per channel,
//         k1 = gamma r,  k2 = (2 gvar - gamma r^2 dgamma) / M,  k3 = (gmean - gamma r dbeta) / M.
//       dr = g' (the residual's cotangent). A zero-sized dx or dr is not wanted and not
//       computed.
//
// Each handler makes two passes over its rows (statistics, then the elementwise map), each
// split over XLA's threads (pieces.h) in chunks that stay in L2 between a chunk's own two reads;
// per-piece sums are merged in piece order. The hot loops are compiled for AVX-512, AVX2 and
// baseline x86-64, the CPU picking its own at load time (GCC's target_clones).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "pieces.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using fcnn_native::ForEachPiece;
using fcnn_native::PieceCount;

using F32Any = ffi::Buffer<ffi::F32>;
using F32AnyOut = ffi::ResultBuffer<ffi::F32>;
using F32R1 = ffi::Buffer<ffi::F32, 1>;
using F32R1Out = ffi::ResultBuffer<ffi::F32, 1>;

constexpr int64_t kChunkBytes = 256 << 10;

#define FCNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// sum[c] += the chunk's sum; m2[c] = sum of (x - chunk mean)^2 (overwritten).
FCNN_CLONES void ChunkStats(const float* __restrict x, int64_t rows, int64_t C,
                            double* __restrict sum, double* __restrict mean,
                            double* __restrict m2) {
  std::fill(sum, sum + C, 0.0);
  std::fill(m2, m2 + C, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict row = x + r * C;
    for (int64_t c = 0; c < C; ++c) sum[c] += row[c];
  }
  for (int64_t c = 0; c < C; ++c) mean[c] = sum[c] / static_cast<double>(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict row = x + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const double d = row[c] - mean[c];
      m2[c] += d * d;
    }
  }
}

template <bool kRelu, bool kResidual>
inline void NormalizeOf(const float* __restrict x, const float* __restrict res,
                        float* __restrict y, int64_t rows, int64_t C,
                        const float* __restrict mean, const float* __restrict scale,
                        const float* __restrict beta) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * C;
    for (int64_t c = 0; c < C; ++c) {
      float v = (x[o + c] - mean[c]) * scale[c] + beta[c];
      if constexpr (kResidual) v += res[o + c];
      if constexpr (kRelu) v = v <= 0.f ? 0.f : v;
      y[o + c] = v;
    }
  }
}

// y = act((x - mean) * scale + beta + res); res null: no residual.
FCNN_CLONES void Normalize(const float* x, const float* res, float* y, int64_t rows,
                           int64_t C, const float* mean, const float* scale, const float* beta,
                           bool relu) {
  if (relu && res) {
    NormalizeOf<true, true>(x, res, y, rows, C, mean, scale, beta);
  } else if (relu) {
    NormalizeOf<true, false>(x, res, y, rows, C, mean, scale, beta);
  } else if (res) {
    NormalizeOf<false, true>(x, res, y, rows, C, mean, scale, beta);
  } else {
    NormalizeOf<false, false>(x, res, y, rows, C, mean, scale, beta);
  }
}

// g' = m ⊙ g: 0 where y <= 0 (kMasked), g itself otherwise. Inlined into each loop below as a
// select, which the compiler vectorises (a test of y's pointer per element would not be).
template <bool kMasked>
inline float Masked(const float* __restrict g, const float* __restrict y, int64_t i) {
  if constexpr (kMasked) {  // g's bits and-ed with all ones, or with zeros where y <= 0
    uint32_t bits;
    std::memcpy(&bits, g + i, 4);
    bits &= -static_cast<uint32_t>(!(y[i] <= 0.f));
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  } else {
    return g[i];
  }
}

// sb[c] += sum g', sxg[c] += sum g' (x - mean).
template <bool kMasked>
inline void BackwardSumsOf(const float* __restrict g, const float* __restrict x,
                           const float* __restrict y, int64_t rows, int64_t C,
                           const float* __restrict mean, double* __restrict sb,
                           double* __restrict sxg) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float gm = Masked<kMasked>(g, y, o + c);
      sb[c] += gm;
      sxg[c] += static_cast<double>(gm) * (x[o + c] - mean[c]);
    }
  }
}

// dx = k1 g' + k2 (x - mean) + k3 (kDx), dr = g' (kDr).
template <bool kMasked, bool kDx, bool kDr>
inline void BackwardDxOf(const float* __restrict g, const float* __restrict x,
                         const float* __restrict y, float* __restrict dx, float* __restrict dr,
                         int64_t rows, int64_t C, const float* __restrict mean,
                         const float* __restrict k1, const float* __restrict k2,
                         const float* __restrict k3) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float gm = Masked<kMasked>(g, y, o + c);
      if constexpr (kDx) dx[o + c] = k1[c] * gm + k2[c] * (x[o + c] - mean[c]) + k3[c];
      if constexpr (kDr) dr[o + c] = gm;
    }
  }
}

// y null: no mask.
FCNN_CLONES void BackwardSums(const float* g, const float* x, const float* y, int64_t rows,
                              int64_t C, const float* mean, double* sb, double* sxg) {
  if (y) {
    BackwardSumsOf<true>(g, x, y, rows, C, mean, sb, sxg);
  } else {
    BackwardSumsOf<false>(g, x, y, rows, C, mean, sb, sxg);
  }
}

// y null: no mask; dx or dr null: not wanted (not both).
FCNN_CLONES void BackwardDx(const float* g, const float* x, const float* y, float* dx,
                            float* dr, int64_t rows, int64_t C, const float* mean,
                            const float* k1, const float* k2, const float* k3) {
#define FCNN_DX(M, X, R) BackwardDxOf<M, X, R>(g, x, y, dx, dr, rows, C, mean, k1, k2, k3)
  if (y) {
    if (dx && dr) FCNN_DX(true, true, true); else if (dx) FCNN_DX(true, true, false);
    else FCNN_DX(true, false, true);
  } else {
    if (dx && dr) FCNN_DX(false, true, true); else if (dx) FCNN_DX(false, true, false);
    else FCNN_DX(false, false, true);
  }
#undef FCNN_DX
}

struct Rows {
  int64_t m = 0, c = 0, chunk = 1, chunks = 0;
};

ffi::Error RowsOf(const F32Any& x, int64_t channels, Rows* rows) {
  const auto dims = x.dimensions();
  if (dims.size() < 1 || dims.back() != channels || channels <= 0) {
    return ffi::Error::InvalidArgument("fcnn batch_norm: x's last axis must hold the channels");
  }
  rows->c = channels;
  rows->m = static_cast<int64_t>(x.element_count()) / channels;
  if (rows->m == 0) return ffi::Error::InvalidArgument("fcnn batch_norm: x has no rows");
  rows->chunk = std::max<int64_t>(1, kChunkBytes / (channels * 4));
  rows->chunks = (rows->m + rows->chunk - 1) / rows->chunk;
  return ffi::Error::Success();
}

// Runs work(piece, first row, rows) over every chunk of rows, the chunks split over XLA's threads.
template <typename Work>
ffi::Error ForEachChunk(ffi::ThreadPool& pool, const Rows& rows, int64_t count, Work work) {
  return ForEachPiece(pool, rows.chunks, count, [&](int64_t piece, int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      const int64_t r0 = k * rows.chunk;
      work(piece, r0, std::min(rows.chunk, rows.m - r0));
    }
  });
}

ffi::Error BatchNormFwdImpl(ffi::ThreadPool pool, F32Any x, F32R1 gamma, F32R1 beta,
                            F32Any res, F32AnyOut y, F32R1Out mean_out, F32R1Out var_out, double eps,
                            int64_t relu) {
  Rows rows;
  const int64_t C = static_cast<int64_t>(gamma.element_count());
  if (auto err = RowsOf(x, C, &rows); !err.success()) return err;
  const bool residual = res.element_count() > 0;
  if (static_cast<int64_t>(beta.element_count()) != C ||
      y->element_count() != x.element_count() ||
      (residual && res.element_count() != x.element_count())) {
    return ffi::Error::InvalidArgument("fcnn batch_norm: operand shapes");
  }
  const int64_t count = PieceCount(pool, rows.chunks);
  // per piece: rows seen, running mean (Chan), sum, M2
  std::vector<int64_t> seen(count, 0);
  std::vector<std::vector<double>> pmean(count, std::vector<double>(C, 0.0)),
      psum(count, std::vector<double>(C, 0.0)), pm2(count, std::vector<double>(C, 0.0));
  // Chan et al.: (n_a, mean_a, M2_a) + (n_b, mean_b, M2_b)
  auto merge = [C](int64_t& na, double* ma, double* m2a, int64_t nb, const double* mb,
                   const double* m2b) {
    const double n = static_cast<double>(na + nb);
    for (int64_t c = 0; c < C; ++c) {
      const double delta = mb[c] - ma[c];
      if (na == 0) {
        ma[c] = mb[c];
        m2a[c] = m2b[c];
      } else {
        m2a[c] += m2b[c] + delta * delta * (static_cast<double>(na) * nb / n);
        ma[c] += delta * (nb / n);
      }
    }
    na += nb;
  };
  auto err = ForEachChunk(pool, rows, count, [&](int64_t p, int64_t r0, int64_t n) {
    thread_local std::vector<double> sum, mean, m2;
    sum.resize(C);
    mean.resize(C);
    m2.resize(C);
    ChunkStats(x.typed_data() + r0 * C, n, C, sum.data(), mean.data(), m2.data());
    for (int64_t c = 0; c < C; ++c) psum[p][c] += sum[c];
    merge(seen[p], pmean[p].data(), pm2[p].data(), n, mean.data(), m2.data());
  });
  if (!err.success()) return err;
  for (int64_t p = 1; p < count; ++p) {
    for (int64_t c = 0; c < C; ++c) psum[0][c] += psum[p][c];
    merge(seen[0], pmean[0].data(), pm2[0].data(), seen[p], pmean[p].data(), pm2[p].data());
  }
  std::vector<float> mean(C), scale(C);
  const float* gv = gamma.typed_data();
  for (int64_t c = 0; c < C; ++c) {
    const double mu = psum[0][c] / static_cast<double>(rows.m);  // IEEE: sum / M
    const double var = pm2[0][c] / static_cast<double>(rows.m);
    mean[c] = static_cast<float>(mu);
    mean_out->typed_data()[c] = mean[c];
    var_out->typed_data()[c] = static_cast<float>(var);
    scale[c] = static_cast<float>(gv[c] / std::sqrt(var + eps));
  }
  return ForEachChunk(pool, rows, count, [&](int64_t, int64_t r0, int64_t n) {
    Normalize(x.typed_data() + r0 * C, residual ? res.typed_data() + r0 * C : nullptr,
              y->typed_data() + r0 * C, n, C, mean.data(), scale.data(), beta.typed_data(),
              relu != 0);
  });
}

ffi::Error BatchNormBwdImpl(ffi::ThreadPool pool, F32Any g, F32Any x, F32Any y, F32R1 gamma,
                            F32R1 mean, F32R1 var, F32R1 gmean, F32R1 gvar, F32AnyOut dx,
                            F32R1Out dgamma, F32R1Out dbeta, F32AnyOut dr, double eps) {
  Rows rows;
  const int64_t C = static_cast<int64_t>(gamma.element_count());
  if (auto err = RowsOf(x, C, &rows); !err.success()) return err;
  const bool masked = y.element_count() > 0, want_dx = dx->element_count() > 0,
             want_dr = dr->element_count() > 0;
  if (g.element_count() != x.element_count() ||
      (masked && y.element_count() != x.element_count()) ||
      (want_dx && dx->element_count() != x.element_count()) ||
      (want_dr && dr->element_count() != x.element_count()) ||
      static_cast<int64_t>(mean.element_count()) != C ||
      static_cast<int64_t>(var.element_count()) != C ||
      static_cast<int64_t>(gmean.element_count()) != C ||
      static_cast<int64_t>(gvar.element_count()) != C) {
    return ffi::Error::InvalidArgument("fcnn batch_norm backward: operand shapes");
  }
  const float* yd = masked ? y.typed_data() : nullptr;
  const int64_t count = PieceCount(pool, rows.chunks);
  std::vector<std::vector<double>> psb(count, std::vector<double>(C, 0.0)),
      psxg(count, std::vector<double>(C, 0.0));
  auto err = ForEachChunk(pool, rows, count, [&](int64_t p, int64_t r0, int64_t n) {
    BackwardSums(g.typed_data() + r0 * C, x.typed_data() + r0 * C, yd ? yd + r0 * C : nullptr,
                 n, C, mean.typed_data(), psb[p].data(), psxg[p].data());
  });
  if (!err.success()) return err;
  std::vector<float> k1(C), k2(C), k3(C);
  const double m = static_cast<double>(rows.m);
  for (int64_t c = 0; c < C; ++c) {
    double sb = 0, sxg = 0;
    for (int64_t p = 0; p < count; ++p) {
      sb += psb[p][c];
      sxg += psxg[p][c];
    }
    const double r = 1.0 / std::sqrt(static_cast<double>(var.typed_data()[c]) + eps);
    const double gam = gamma.typed_data()[c], dgam = sxg * r;
    dgamma->typed_data()[c] = static_cast<float>(dgam);
    dbeta->typed_data()[c] = static_cast<float>(sb);
    k1[c] = static_cast<float>(gam * r);
    k2[c] = static_cast<float>((2.0 * gvar.typed_data()[c] - gam * r * r * dgam) / m);
    k3[c] = static_cast<float>((gmean.typed_data()[c] - gam * r * sb) / m);
  }
  if (!want_dx && !want_dr) return ffi::Error::Success();
  return ForEachChunk(pool, rows, count, [&](int64_t, int64_t r0, int64_t n) {
    BackwardDx(g.typed_data() + r0 * C, x.typed_data() + r0 * C, yd ? yd + r0 * C : nullptr,
               want_dx ? dx->typed_data() + r0 * C : nullptr,
               want_dr ? dr->typed_data() + r0 * C : nullptr, n, C, mean.typed_data(),
               k1.data(), k2.data(), k3.data());
  });
}

}  // namespace

#define FCNN_EXPORT __attribute__((visibility("default")))
extern "C" {
FCNN_EXPORT XLA_FFI_Error* OnednnBatchNormFwd(XLA_FFI_CallFrame*);
FCNN_EXPORT XLA_FFI_Error* OnednnBatchNormBwd(XLA_FFI_CallFrame*);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnBatchNormFwd, BatchNormFwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32Any>()    // x
                                  .Arg<F32R1>()     // gamma
                                  .Arg<F32R1>()     // beta
                                  .Arg<F32Any>()    // r (the residual), or zero-sized
                                  .Ret<F32Any>()    // y
                                  .Ret<F32R1>()     // mean
                                  .Ret<F32R1>()     // var (biased)
                                  .Attr<double>("eps")
                                  .Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnBatchNormBwd, BatchNormBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32Any>()    // g
                                  .Arg<F32Any>()    // x
                                  .Arg<F32Any>()    // y (ReLU's mask), or zero-sized
                                  .Arg<F32R1>()     // gamma
                                  .Arg<F32R1>()     // mean
                                  .Arg<F32R1>()     // var
                                  .Arg<F32R1>()     // the cotangent of mean
                                  .Arg<F32R1>()     // the cotangent of var
                                  .Ret<F32Any>()    // dx, or zero-sized
                                  .Ret<F32R1>()     // dgamma
                                  .Ret<F32R1>()     // dbeta
                                  .Ret<F32Any>()    // dr, or zero-sized
                                  .Attr<double>("eps"));
