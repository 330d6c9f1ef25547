// fcnn's optional native part: oneDNN's convolutions as XLA FFI handlers (native/README.md).
//
// fcnn's hand-written rules decide *what* each map computes; these handlers only compute it:
//   fcnn_onednn_conv_fwd   y  = conv(x, w)      convolution_forward
//   fcnn_onednn_conv_dx    dX = conv_dx(g, w)   convolution_backward_data: the full convolution
//                                                of g with the flipped kernel
//   fcnn_onednn_conv_dk    dK = conv_dk(x, g)   convolution_backward_weights: the
//                                                cross-correlation of x with g
// Layouts are fcnn's: activations NHWC (N, H, W, C), kernels HWIO (kh, kw, C/G, O), float32;
// in 3-D (the `...3` handlers) NDHWC and DHWIO. A 1-D problem is a 2-D one with a unit height
// (fcnn/ops/onednn.py).
// Groups follow XLA's feature_group_count (group g: input channels [g*C/G, (g+1)*C/G), outputs
// [g*O/G, (g+1)*O/G)).
//
// Attributes (int64): window_strides [sh, sw]; padding [top, bottom, left, right] (>= 0);
// rhs_dilation [dh, dw] (XLA's convention, >= 1); feature_group_count. In 3-D each has the
// depth first: [sd, sh, sw], [front, back, top, bottom, left, right], [dd, dh, dw]. The activations stay in
// fcnn's layout; the kernel is reordered into oneDNN's preferred one (PrimitiveDescs).
//
// Primitives are created once per configuration (oneDNN JIT-compiles their kernels) and cached.
// Each call splits the batch over XLA's own thread pool, oneDNN single-threaded in each piece
// (below, "The batch split"); the scratchpad is user-managed, a per-thread workspace holding it
// and the reordered operands.

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "pieces.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum class Kind : int64_t { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };
// The forward's epilogue fused into oneDNN's kernel: the bias.
constexpr int64_t kBias = 1;

// ---------------------------------------------------------------------------
// Problem description and cache key.
// ---------------------------------------------------------------------------
struct ConvProblem {
  int64_t n, h, w, c;      // input
  int64_t oh, ow, o;       // output
  int64_t kh, kw;          // kernel window
  int64_t sh, sw;          // strides
  int64_t dh, dw;          // XLA dilation (>= 1)
  int64_t pt, pb, pl, pr;  // explicit padding
  int64_t g;               // feature_group_count
  int64_t epilogue = 0;    // forward only: kBias (added inside the convolution's kernel)
  // the depth of a 3-D problem (volume): its size, output, kernel, stride, dilation, padding
  bool three = false;
  int64_t d = 1, od = 1, kd = 1, sd = 1, dd = 1, pf = 0, pk = 0;

  // per image: the input's and the output's sizes
  int64_t in_size() const { return d * h * w * c; }
  int64_t out_size() const { return od * oh * ow * o; }

  using Key = std::array<int64_t, 28>;
  Key key(Kind kind) const {
    return {static_cast<int64_t>(kind), n, h, w, c, oh, ow, o, kh, kw,
            sh, sw, dh, dw, pt, pb, pl, pr, g, epilogue,
            three, d, od, kd, sd, dd, pf, pk};
  }
};

struct KeyHash {
  size_t operator()(const ConvProblem::Key& k) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the int64 words
    for (int64_t v : k) {
      h ^= static_cast<uint64_t>(v);
      h *= 1099511628211ull;
    }
    return static_cast<size_t>(h);
  }
};

// ---------------------------------------------------------------------------
// Global oneDNN state.
// ---------------------------------------------------------------------------
dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// Per-thread growable, 64-byte aligned workspace used for the scratchpad and
// for reorder temporaries.  A handler never re-enters on the same thread, so
// one buffer per thread is enough.
class Workspace {
 public:
  void* Get(size_t bytes) {
    if (bytes > size_) {
      std::free(ptr_);
      size_ = (bytes + 4095) & ~size_t{4095};
      ptr_ = std::aligned_alloc(64, size_);
      if (!ptr_) size_ = 0;
    }
    return ptr_;
  }
  ~Workspace() { std::free(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

size_t Align64(size_t n) { return (n + 63) & ~size_t{63}; }

// ---------------------------------------------------------------------------
// A cached primitive plus what is needed to bind user buffers to it.
// ---------------------------------------------------------------------------
struct Operand {
  int arg = 0;                  // DNNL_ARG_*
  dnnl::memory::desc user_md;   // plain layout of the XLA buffer
  dnnl::memory::desc prim_md;   // layout the primitive wants
  bool reorder = false;
  dnnl::reorder reorder_prim;   // user->prim (inputs) or prim->user (output)
  size_t reorder_scratch_bytes = 0;
};

struct CachedConv {
  dnnl::primitive prim;
  Operand in[2];
  Operand out;
  dnnl::memory::desc bias_md;  // zero-sized when there is no bias
  size_t scratch_bytes = 0;
  std::string impl;
};

std::mutex g_cache_mu;
std::unordered_map<ConvProblem::Key, std::shared_ptr<const CachedConv>, KeyHash>*
    g_cache = new std::unordered_map<ConvProblem::Key,
                                     std::shared_ptr<const CachedConv>, KeyHash>();

struct Descs {
  dnnl::memory::desc src, wei, dst;
};

// fcnn's layouts: activations NHWC, the kernel HWIO; for groups, (G, O/G, C/G, KH, KW) stored as
// KH, KW, C/G, G, O/G, i.e. HWIO with O split as (G, O/G).
// In 3-D: NDHWC activations and DHWIO kernels (DHWIGO with groups).
dnnl::memory::dims KernelDims(const ConvProblem& p) {
  if (p.three) {
    if (p.g == 1) return {p.o, p.c, p.kd, p.kh, p.kw};
    return {p.g, p.o / p.g, p.c / p.g, p.kd, p.kh, p.kw};
  }
  if (p.g == 1) return {p.o, p.c, p.kh, p.kw};
  return {p.g, p.o / p.g, p.c / p.g, p.kh, p.kw};
}

dnnl::memory::dims SrcDims(const ConvProblem& p) {
  if (p.three) return {p.n, p.c, p.d, p.h, p.w};
  return {p.n, p.c, p.h, p.w};
}

Descs UserDescs(const ConvProblem& p) {
  const tag act = p.three ? tag::ndhwc : tag::nhwc;
  const tag wei = p.three ? (p.g == 1 ? tag::dhwio : tag::dhwigo)
                          : (p.g == 1 ? tag::hwio : tag::hwigo);
  const dnnl::memory::dims dst = p.three ? dnnl::memory::dims{p.n, p.o, p.od, p.oh, p.ow}
                                         : dnnl::memory::dims{p.n, p.o, p.oh, p.ow};
  return {dnnl::memory::desc(SrcDims(p), dt::f32, act),
          dnnl::memory::desc(KernelDims(p), dt::f32, wei),
          dnnl::memory::desc(dst, dt::f32, act)};
}

// What the primitives are asked for: the activations as they are (NHWC: no copy of the large
// tensors), the kernel in whatever layout oneDNN prefers (a small reorder per call). Measured on
// the CIFAR net's 3x3 layers against every operand in oneDNN's own layout and against none:
// as fast or faster in 17 of 18 maps, dK 1.2-1.3x (docs/performance.md). One exception: for an
// ungrouped dX whose channel count is not a multiple of 16 (a SIMD register of floats on
// AVX-512, two on AVX2) the dX layout is left to oneDNN (`any`). Asked for NHWC outright, oneDNN
// 3.2 runs such a dX through its brgemm backward-by-forward kernel (`brg_fwd+brgconv`); left
// free, it takes its direct backward-data kernel (`jit:avx512_core`, `jit:avx2`), which still
// writes NHWC (no reorder): LeNet-5's 6-channel dX 0.96 -> 0.60 ms. The CIFAR net's 32- and
// 64-channel dX lose 3-25% when left free, so they are asked for NHWC; so are grouped ones, for
// which oneDNN left free fell back to its reference kernel (`ref:any`, 38x slower). Any
// configuration left free whose kernel would be a reference one is asked for NHWC (GetConv).
constexpr int64_t kSimdChannels = 16;

bool FreeDxLayout(Kind kind, const ConvProblem& p) {
  return kind == Kind::kBwdData && p.g == 1 && p.c % kSimdChannels != 0;
}

Descs PrimitiveDescs(const ConvProblem& p, bool free_dx) {
  Descs d = UserDescs(p);
  d.wei = dnnl::memory::desc(KernelDims(p), dt::f32, tag::any);
  if (free_dx) d.src = dnnl::memory::desc(SrcDims(p), dt::f32, tag::any);
  return d;
}

Operand MakeOperand(int arg, const dnnl::memory::desc& user,
                    const dnnl::memory::desc& prim, bool is_input) {
  Operand op;
  op.arg = arg;
  op.user_md = user;
  op.prim_md = prim;
  op.reorder = (user != prim);
  if (op.reorder) {
    auto& eng = Engine();
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::reorder::primitive_desc rpd =
        is_input ? dnnl::reorder::primitive_desc(eng, user, eng, prim, attr)
                 : dnnl::reorder::primitive_desc(eng, prim, eng, user, attr);
    op.reorder_prim = dnnl::reorder(rpd);
    op.reorder_scratch_bytes = rpd.scratchpad_desc().get_size();
  }
  return op;
}

std::shared_ptr<const CachedConv> CreateConv(Kind kind, const ConvProblem& p,
                                             bool free_dx) {
  auto& eng = Engine();
  const Descs plain = UserDescs(p);
  const Descs req = PrimitiveDescs(p, free_dx);

  using dims = dnnl::memory::dims;
  const dims strides = p.three ? dims{p.sd, p.sh, p.sw} : dims{p.sh, p.sw};
  const dims dilates = p.three ? dims{p.dd - 1, p.dh - 1, p.dw - 1}  // oneDNN: d - 1
                               : dims{p.dh - 1, p.dw - 1};
  const dims pad_l = p.three ? dims{p.pf, p.pt, p.pl} : dims{p.pt, p.pl};
  const dims pad_r = p.three ? dims{p.pk, p.pb, p.pr} : dims{p.pb, p.pr};
  const auto alg = dnnl::algorithm::convolution_direct;

  dnnl::primitive_attr attr;
  // User-managed scratchpad: with the default (library) mode and the default
  // DNNL_ENABLE_CONCURRENT_EXEC=OFF build, a primitive must not migrate
  // between threads, but XLA calls us from arbitrary pool threads.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);

  auto out = std::make_shared<CachedConv>();
  const auto prop =
      kind == Kind::kFwd ? dnnl::prop_kind::forward_inference
                         : dnnl::prop_kind::forward_training;
  // No ReLU post-op: oneDNN 3.2's (eltwise_relu, alpha 0) turns a NaN into 0, which fcnn's relu
  // never does (docs/correctness.md, "NaN and infinities"); ConvActFwdImpl applies it to each
  // chunk of the output while the chunk is in cache.
  const dnnl::primitive_attr& fwd_attr = attr;
  const dnnl::memory::desc bias_md =
      (p.epilogue & kBias) ? dnnl::memory::desc({p.o}, dt::f32, tag::a) : dnnl::memory::desc();
  dnnl::convolution_forward::primitive_desc fwd_pd =
      (p.epilogue & kBias)
          ? dnnl::convolution_forward::primitive_desc(eng, prop, alg, req.src, req.wei, bias_md,
                                                      req.dst, strides, dilates, pad_l, pad_r,
                                                      fwd_attr)
          : dnnl::convolution_forward::primitive_desc(eng, prop, alg, req.src, req.wei, req.dst,
                                                      strides, dilates, pad_l, pad_r, fwd_attr);
  out->bias_md = bias_md;

  switch (kind) {
    case Kind::kFwd: {
      out->prim = dnnl::convolution_forward(fwd_pd);
      out->in[0] = MakeOperand(DNNL_ARG_SRC, plain.src, fwd_pd.src_desc(), true);
      out->in[1] =
          MakeOperand(DNNL_ARG_WEIGHTS, plain.wei, fwd_pd.weights_desc(), true);
      out->out = MakeOperand(DNNL_ARG_DST, plain.dst, fwd_pd.dst_desc(), false);
      out->scratch_bytes = fwd_pd.scratchpad_desc().get_size();
      out->impl = fwd_pd.impl_info_str();
      break;
    }
    case Kind::kBwdData: {
      dnnl::convolution_backward_data::primitive_desc pd(
          eng, alg, req.src, req.wei, req.dst, strides, dilates, pad_l, pad_r,
          fwd_pd, attr);
      out->prim = dnnl::convolution_backward_data(pd);
      out->in[0] =
          MakeOperand(DNNL_ARG_DIFF_DST, plain.dst, pd.diff_dst_desc(), true);
      out->in[1] =
          MakeOperand(DNNL_ARG_WEIGHTS, plain.wei, pd.weights_desc(), true);
      out->out =
          MakeOperand(DNNL_ARG_DIFF_SRC, plain.src, pd.diff_src_desc(), false);
      out->scratch_bytes = pd.scratchpad_desc().get_size();
      out->impl = pd.impl_info_str();
      break;
    }
    case Kind::kBwdWeights: {
      dnnl::convolution_backward_weights::primitive_desc pd(
          eng, alg, req.src, req.wei, req.dst, strides, dilates, pad_l, pad_r,
          fwd_pd, attr);
      out->prim = dnnl::convolution_backward_weights(pd);
      out->in[0] = MakeOperand(DNNL_ARG_SRC, plain.src, pd.src_desc(), true);
      out->in[1] =
          MakeOperand(DNNL_ARG_DIFF_DST, plain.dst, pd.diff_dst_desc(), true);
      out->out = MakeOperand(DNNL_ARG_DIFF_WEIGHTS, plain.wei,
                             pd.diff_weights_desc(), false);
      out->scratch_bytes = pd.scratchpad_desc().get_size();
      out->impl = pd.impl_info_str();
      break;
    }
  }
  // Reorders have their own (usually empty) scratchpads; reserve the max.
  for (const Operand* op : {&out->in[0], &out->in[1], &out->out}) {
    if (op->reorder_scratch_bytes > out->scratch_bytes) {
      out->scratch_bytes = op->reorder_scratch_bytes;
    }
  }
  return out;
}

std::shared_ptr<const CachedConv> GetConv(Kind kind, const ConvProblem& p) {
  const auto key = p.key(kind);
  {
    std::lock_guard<std::mutex> lock(g_cache_mu);
    auto it = g_cache->find(key);
    if (it != g_cache->end()) return it->second;
  }
  // Create outside the lock (JIT compilation can take milliseconds); if two
  // threads race, the first insertion wins and the other result is dropped.
  const bool free_dx = FreeDxLayout(kind, p);
  auto conv = CreateConv(kind, p, free_dx);
  if (free_dx && conv->impl.rfind("ref", 0) == 0) {
    conv = CreateConv(kind, p, false);  // left free, oneDNN found only its reference kernel
  }
  std::lock_guard<std::mutex> lock(g_cache_mu);
  return g_cache->emplace(key, std::move(conv)).first->second;
}

// Executes `conv` on user buffers in0, in1 (and the bias, for a forward with one) -> out, all
// in plain layouts.
void Execute(const CachedConv& conv, void* in0, void* in1, void* out, void* bias = nullptr) {
  auto& eng = Engine();

  // Workspace layout: [scratchpad | in0' | in1' | out'] for reordered operands.
  size_t total = Align64(conv.scratch_bytes);
  size_t off_in[2] = {0, 0}, off_out = 0;
  for (int i = 0; i < 2; ++i) {
    if (conv.in[i].reorder) {
      off_in[i] = total;
      total += Align64(conv.in[i].prim_md.get_size());
    }
  }
  if (conv.out.reorder) {
    off_out = total;
    total += Align64(conv.out.prim_md.get_size());
  }
  thread_local Workspace ws;
  char* base = static_cast<char*>(ws.Get(total > 0 ? total : 64));
  if (!base) throw std::bad_alloc();

  dnnl::stream strm(eng);
  // Passing a zero-sized scratchpad is avoided; the arg is added only if used.
  dnnl::memory scratch;
  if (conv.scratch_bytes > 0) {
    scratch = dnnl::memory(
        dnnl::memory::desc({static_cast<int64_t>(conv.scratch_bytes)}, dt::u8,
                           tag::a),
        eng, base);
  }
  auto with_scratch = [&](std::unordered_map<int, dnnl::memory> args) {
    if (conv.scratch_bytes > 0) args.emplace(DNNL_ARG_SCRATCHPAD, scratch);
    return args;
  };

  auto bind_input = [&](const Operand& op, void* user_ptr, size_t off) {
    dnnl::memory user(op.user_md, eng, user_ptr);
    if (!op.reorder) return user;
    dnnl::memory prim(op.prim_md, eng, base + off);
    op.reorder_prim.execute(
        strm, with_scratch({{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, prim}}));
    return prim;
  };
  dnnl::memory m0 = bind_input(conv.in[0], in0, off_in[0]);
  dnnl::memory m1 = bind_input(conv.in[1], in1, off_in[1]);
  dnnl::memory user_out(conv.out.user_md, eng, out);
  dnnl::memory m_out = conv.out.reorder
                           ? dnnl::memory(conv.out.prim_md, eng, base + off_out)
                           : user_out;

  std::unordered_map<int, dnnl::memory> args = {
      {conv.in[0].arg, m0}, {conv.in[1].arg, m1}, {conv.out.arg, m_out}};
  if (bias != nullptr) args.emplace(DNNL_ARG_BIAS, dnnl::memory(conv.bias_md, eng, bias));
  conv.prim.execute(strm, with_scratch(std::move(args)));
  if (conv.out.reorder) {
    conv.out.reorder_prim.execute(
        strm, with_scratch({{DNNL_ARG_FROM, m_out}, {DNNL_ARG_TO, user_out}}));
  }
  strm.wait();
}

// ---------------------------------------------------------------------------
// Attribute / shape validation.
// ---------------------------------------------------------------------------
ffi::Error MakeProblem(ffi::Span<const int64_t> x_dims,
                       ffi::Span<const int64_t> w_dims,
                       ffi::Span<const int64_t> y_dims,
                       ffi::Span<const int64_t> strides,
                       ffi::Span<const int64_t> padding,
                       ffi::Span<const int64_t> dilation, int64_t groups,
                       ConvProblem* p) {
  const bool three = x_dims.size() == 5;
  const size_t r = three ? 3 : 2;
  if (x_dims.size() != r + 2 || w_dims.size() != r + 2 || y_dims.size() != r + 2 ||
      strides.size() != r || padding.size() != 2 * r || dilation.size() != r) {
    return ffi::Error::InvalidArgument(
        "fcnn onednn conv: window_strides and rhs_dilation need one entry per spatial axis "
        "(2 or 3), padding two (low, high), the operands rank 4 or 5");
  }
  p->three = three;
  const size_t o = three ? 1 : 0;  // the H, W entries follow the depth's in 3-D
  if (three) {
    p->d = x_dims[1]; p->kd = w_dims[0]; p->od = y_dims[1]; p->sd = strides[0];
    p->pf = padding[0]; p->pk = padding[1]; p->dd = dilation[0];
  }
  p->n = x_dims[0]; p->h = x_dims[1 + o]; p->w = x_dims[2 + o]; p->c = x_dims[3 + o];
  p->kh = w_dims[0 + o]; p->kw = w_dims[1 + o];
  p->oh = y_dims[1 + o]; p->ow = y_dims[2 + o]; p->o = y_dims[3 + o];
  p->sh = strides[0 + o]; p->sw = strides[1 + o];
  p->pt = padding[0 + 2 * o]; p->pb = padding[1 + 2 * o];
  p->pl = padding[2 + 2 * o]; p->pr = padding[3 + 2 * o];
  p->dh = dilation[0 + o]; p->dw = dilation[1 + o];
  p->g = groups;

  if (p->sh < 1 || p->sw < 1 || p->dh < 1 || p->dw < 1 || p->g < 1 || p->sd < 1 ||
      p->dd < 1) {
    return ffi::Error::InvalidArgument(
        "fcnn onednn conv: strides, dilation and groups must be >= 1");
  }
  if (p->pt < 0 || p->pb < 0 || p->pl < 0 || p->pr < 0 || p->pf < 0 || p->pk < 0) {
    return ffi::Error::InvalidArgument(
        "fcnn onednn conv: negative padding is not supported");
  }
  if (y_dims[0] != p->n || p->c % p->g != 0 || p->o % p->g != 0 ||
      w_dims[2 + o] * p->g != p->c || w_dims[3 + o] != p->o) {
    return ffi::Error::InvalidArgument(
        "fcnn onednn conv: inconsistent N / channel / group dimensions");
  }
  auto out_size = [](int64_t in, int64_t k, int64_t s, int64_t d, int64_t lo,
                     int64_t hi) {
    int64_t eff = (k - 1) * d + 1;
    int64_t padded = in + lo + hi;
    return padded < eff ? 0 : (padded - eff) / s + 1;
  };
  if (out_size(p->h, p->kh, p->sh, p->dh, p->pt, p->pb) != p->oh ||
      out_size(p->w, p->kw, p->sw, p->dw, p->pl, p->pr) != p->ow ||
      out_size(p->d, p->kd, p->sd, p->dd, p->pf, p->pk) != p->od) {
    return ffi::Error::InvalidArgument(
        "fcnn onednn conv: output spatial size does not match the configuration");
  }
  return ffi::Error::Success();
}

using F32R4 = ffi::Buffer<ffi::F32, 4>;
using F32R4Out = ffi::ResultBuffer<ffi::F32, 4>;
using F32R1 = ffi::Buffer<ffi::F32, 1>;  // (aliases: a comma would split the macros' arguments)
using F32R1Out = ffi::ResultBuffer<ffi::F32, 1>;
using I64Span = ffi::Span<const int64_t>;
template <size_t R>
using F32In = ffi::Buffer<ffi::F32, R>;
template <size_t R>
using F32Out = ffi::ResultBuffer<ffi::F32, R>;

// oneDNN rejects zero-sized dimensions; handle empty problems directly.
// Returns true if the call is fully handled (output zero-filled or empty).
template <size_t R>
bool HandleEmpty(size_t in0_elems, size_t in1_elems, const ffi::Buffer<ffi::F32, R>& out) {
  if (out.element_count() == 0) return true;
  if (in0_elems == 0 || in1_elems == 0) {
    std::memset(out.untyped_data(), 0, out.size_bytes());
    return true;
  }
  return false;
}

using fcnn_native::ForEachPiece;
using fcnn_native::PieceCount;

ConvProblem Slice(ConvProblem p, int64_t images) {
  p.n = images;
  return p;
}

float* At(void* base, int64_t image, int64_t per_image) {
  return static_cast<float*>(base) + image * per_image;
}

// The three maps in 2-D (R = 4: NHWC) and 3-D (R = 5: NDHWC); the same code.
template <size_t R>
ffi::Error ConvFwdImpl(ffi::ThreadPool pool, F32In<R> x, F32In<R> w, F32Out<R> y,
                       I64Span strides, I64Span padding, I64Span dilation, int64_t groups) {
  ConvProblem p;
  if (auto err = MakeProblem(x.dimensions(), w.dimensions(), y->dimensions(), strides,
                             padding, dilation, groups, &p);
      !err.success()) {
    return err;
  }
  if (HandleEmpty(x.element_count(), w.element_count(), *y)) return ffi::Error::Success();
  const int64_t in = p.in_size(), out = p.out_size();
  return ForEachPiece(pool, p.n, PieceCount(pool, p.n), [&](int64_t, int64_t b, int64_t e) {
    auto conv = GetConv(Kind::kFwd, Slice(p, e - b));
    Execute(*conv, At(x.untyped_data(), b, in), w.untyped_data(),
            At(y->untyped_data(), b, out));
  });
}

// dX = convolution_backward_data(g, w), the shape of x.
template <size_t R>
ffi::Error ConvBwdDataImpl(ffi::ThreadPool pool, F32In<R> g, F32In<R> w, F32Out<R> dx,
                           I64Span strides, I64Span padding, I64Span dilation, int64_t groups) {
  ConvProblem p;
  if (auto err = MakeProblem(dx->dimensions(), w.dimensions(), g.dimensions(), strides,
                             padding, dilation, groups, &p);
      !err.success()) {
    return err;
  }
  if (HandleEmpty(g.element_count(), w.element_count(), *dx)) return ffi::Error::Success();
  const int64_t in = p.in_size(), out = p.out_size();
  return ForEachPiece(pool, p.n, PieceCount(pool, p.n), [&](int64_t, int64_t b, int64_t e) {
    auto conv = GetConv(Kind::kBwdData, Slice(p, e - b));
    Execute(*conv, At(g.untyped_data(), b, out), w.untyped_data(),
            At(dx->untyped_data(), b, in));
  });
}

// dK = convolution_backward_weights(x, g), the HWIO shape of w: each piece of the batch gives
// its own sum, added up at the end (the first piece writes the result itself).
template <size_t R>
ffi::Error ConvBwdWeightsImpl(ffi::ThreadPool pool, F32In<R> x, F32In<R> g, F32Out<R> dw,
                              I64Span strides, I64Span padding, I64Span dilation,
                              int64_t groups) {
  ConvProblem p;
  if (auto err = MakeProblem(x.dimensions(), dw->dimensions(), g.dimensions(), strides,
                             padding, dilation, groups, &p);
      !err.success()) {
    return err;
  }
  if (HandleEmpty(x.element_count(), g.element_count(), *dw)) return ffi::Error::Success();
  const int64_t in = p.in_size(), out = p.out_size();
  const int64_t count = PieceCount(pool, p.n);
  const size_t size = dw->element_count();
  std::vector<std::vector<float>> partial(count - 1, std::vector<float>(size));
  auto err = ForEachPiece(pool, p.n, count, [&](int64_t c, int64_t b, int64_t e) {
    auto conv = GetConv(Kind::kBwdWeights, Slice(p, e - b));
    Execute(*conv, At(x.untyped_data(), b, in), At(g.untyped_data(), b, out),
            c == 0 ? dw->untyped_data() : partial[c - 1].data());
  });
  if (!err.success()) return err;
  float* sum = static_cast<float*>(dw->untyped_data());
  for (const auto& piece : partial) {
    for (size_t i = 0; i < size; ++i) sum[i] += piece[i];
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------
// Members: K independent problems of one configuration in one call (an ensemble's members under
// vmap), a leading axis of K on both operands and the result. The K*N images are one batch
// split over XLA's threads, each piece running its images member by member on that member's
// buffers: no slice of the members' arrays and no stacking of results around the call.
// ---------------------------------------------------------------------------
using F32R5 = ffi::Buffer<ffi::F32, 5>;
using F32R5Out = ffi::ResultBuffer<ffi::F32, 5>;

ffi::Error MembersProblem(const F32R5& a, const F32R5& b, F32R5Out& out, int kind,
                          I64Span strides, I64Span padding, I64Span dilation, int64_t groups,
                          ConvProblem* p, int64_t* k) {
  *k = a.dimensions()[0];
  if (b.dimensions()[0] != *k || out->dimensions()[0] != *k) {
    return ffi::Error::InvalidArgument("fcnn onednn conv members: the members axes differ");
  }
  // (x, w, y) of the single problem, whichever of the three are the operands and the result
  const auto x = kind == 1 ? out->dimensions().last(4) : a.dimensions().last(4);
  const auto w = kind == 2 ? out->dimensions().last(4) : b.dimensions().last(4);
  const auto y = kind == 0 ? out->dimensions().last(4)
                           : (kind == 1 ? a.dimensions().last(4) : b.dimensions().last(4));
  return MakeProblem(x, w, y, strides, padding, dilation, groups, p);
}

template <typename Run>
ffi::Error ForEachMemberImages(ffi::ThreadPool& pool, int64_t k, int64_t n, int64_t count,
                               Run run) {
  return ForEachPiece(pool, k * n, count, [&](int64_t c, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi;) {
      const int64_t m = i / n, b = i % n, e = std::min(n, b + (hi - i));
      run(c, m, b, e);
      i += e - b;
    }
  });
}

ffi::Error ConvMembersImpl(ffi::ThreadPool pool, F32R5 a, F32R5 b, F32R5Out out, I64Span strides,
                           I64Span padding, I64Span dilation, int64_t groups, int64_t kind) {
  ConvProblem p;
  int64_t k;
  if (kind < 0 || kind > 2) return ffi::Error::InvalidArgument("fcnn onednn conv members: kind");
  if (auto err = MembersProblem(a, b, out, static_cast<int>(kind), strides, padding, dilation,
                                groups, &p, &k);
      !err.success()) {
    return err;
  }
  if (out->element_count() == 0) return ffi::Error::Success();
  if (a.element_count() == 0 || b.element_count() == 0 || p.n == 0) {
    std::memset(out->untyped_data(), 0, out->size_bytes());
    return ffi::Error::Success();
  }
  const int64_t in = p.in_size(), o = p.out_size();
  const int64_t xs = p.n * in, ys = p.n * o, ws = p.kh * p.kw * (p.c / p.g) * p.o;
  const int64_t count = PieceCount(pool, k * p.n);
  float* A = static_cast<float*>(a.untyped_data());
  float* B = static_cast<float*>(b.untyped_data());
  float* R = static_cast<float*>(out->untyped_data());
  if (kind == 0) {  // y[m] = conv(x[m], w[m])
    return ForEachMemberImages(pool, k, p.n, count, [&](int64_t, int64_t m, int64_t b0,
                                                        int64_t e) {
      Execute(*GetConv(Kind::kFwd, Slice(p, e - b0)), A + m * xs + b0 * in, B + m * ws,
              R + m * ys + b0 * o);
    });
  }
  if (kind == 1) {  // dx[m] = conv_dx(g[m], w[m])
    return ForEachMemberImages(pool, k, p.n, count, [&](int64_t, int64_t m, int64_t b0,
                                                        int64_t e) {
      Execute(*GetConv(Kind::kBwdData, Slice(p, e - b0)), A + m * ys + b0 * o, B + m * ws,
              R + m * xs + b0 * in);
    });
  }
  // dw[m] = conv_dk(x[m], g[m]): each piece sums its images' parts per member
  std::vector<std::vector<float>> part(count, std::vector<float>(k * ws, 0.f));
  auto err = ForEachMemberImages(pool, k, p.n, count, [&](int64_t c, int64_t m, int64_t b0,
                                                          int64_t e) {
    thread_local std::vector<float> dk;
    dk.resize(ws);
    Execute(*GetConv(Kind::kBwdWeights, Slice(p, e - b0)), A + m * xs + b0 * in,
            B + m * ys + b0 * o, dk.data());
    float* __restrict acc = part[c].data() + m * ws;
    for (int64_t i = 0; i < ws; ++i) acc[i] += dk[i];
  });
  if (!err.success()) return err;
  std::memcpy(R, part[0].data(), k * ws * sizeof(float));
  for (int64_t c = 1; c < count; ++c) {
    for (int64_t i = 0; i < k * ws; ++i) R[i] += part[c][i];
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------
// Convolution with its epilogue: y = act(conv(x, w) + b), and the backward of it.
// ---------------------------------------------------------------------------

// The images of a piece are taken in chunks whose output (forward) or masked gradient (backward)
// stays in the core's L2 cache between the passes that read it.
constexpr int64_t kChunkBytes = 512 << 10;

int64_t ChunkImages(int64_t floats_per_image) {
  return std::max<int64_t>(1, kChunkBytes / (floats_per_image * 4));
}

// y = act(conv(x, w) + b): per chunk of images one oneDNN call with the bias inside its kernel
// (a zero-sized b: no bias), then ReLU over the chunk while it is in cache: y <= 0 -> 0, a NaN
// stays NaN.
ffi::Error ConvActFwdImpl(ffi::ThreadPool pool, F32R4 x, F32R4 w, F32R1 b,
                          F32R4Out y, I64Span strides, I64Span padding, I64Span dilation,
                          int64_t groups, int64_t relu) {
  ConvProblem p;
  if (auto err = MakeProblem(x.dimensions(), w.dimensions(), y->dimensions(), strides,
                             padding, dilation, groups, &p);
      !err.success()) {
    return err;
  }
  const bool bias = b.element_count() > 0;
  if (bias && static_cast<int64_t>(b.element_count()) != p.o) {
    return ffi::Error::InvalidArgument("fcnn onednn conv_act: the bias needs one per output");
  }
  p.epilogue = bias ? kBias : 0;
  if (y->element_count() == 0) return ffi::Error::Success();
  if (x.element_count() == 0 || w.element_count() == 0) {  // conv = 0: act(b) per channel
    float* out = static_cast<float*>(y->untyped_data());
    const float* bv = static_cast<const float*>(b.untyped_data());
    for (size_t i = 0; i < y->element_count(); ++i) {
      const float v = bias ? bv[i % p.o] : 0.f;
      out[i] = (relu && v <= 0.f) ? 0.f : v;
    }
    return ffi::Error::Success();
  }
  const int64_t in = p.in_size(), out = p.out_size();
  const int64_t chunk = ChunkImages(out);
  return ForEachPiece(pool, p.n, PieceCount(pool, p.n), [&](int64_t, int64_t lo, int64_t hi) {
    for (int64_t b0 = lo; b0 < hi; b0 += chunk) {
      const int64_t images = std::min(chunk, hi - b0);
      float* yc = At(y->untyped_data(), b0, out);
      Execute(*GetConv(Kind::kFwd, Slice(p, images)), At(x.untyped_data(), b0, in),
              w.untyped_data(), yc, bias ? b.untyped_data() : nullptr);
      if (relu) {
        for (int64_t i = 0; i < images * out; ++i) yc[i] = yc[i] <= 0.f ? 0.f : yc[i];
      }
    }
  });
}

// The backward of y = act(conv(x, w) + b) from g' = m ⊙ g, the upstream gradient with the
// activation's mask already applied (by XLA, which fuses it into whatever computes g: a max
// pool's backward reads y anyway; applied here, re-reading y cost a CIFAR-net step 15 ms):
//   db = sum of g' over N, H, W     dX = conv_dx(g', w)     dK = conv_dk(x, g')
// per piece of the batch on XLA's threads, each piece in chunks of images whose g' stays in L2
// for the three. dK's and db's pieces are summed at the end (db's in double). A zero-sized
// result is not wanted and not computed.
ffi::Error ConvActBwdImpl(ffi::ThreadPool pool, F32R4 g, F32R4 x, F32R4 w, F32R4Out dx,
                          F32R4Out dw, F32R1Out db, I64Span strides, I64Span padding,
                          I64Span dilation, int64_t groups) {
  ConvProblem p;
  if (auto err = MakeProblem(x.dimensions(), w.dimensions(), g.dimensions(), strides,
                             padding, dilation, groups, &p);
      !err.success()) {
    return err;
  }
  const bool want_dx = dx->element_count() > 0, want_dw = dw->element_count() > 0,
             want_db = db->element_count() > 0;
  if ((want_dx && dx->element_count() != x.element_count()) ||
      (want_dw && dw->element_count() != w.element_count()) ||
      (want_db && static_cast<int64_t>(db->element_count()) != p.o)) {
    return ffi::Error::InvalidArgument("fcnn onednn conv_act backward: result shapes");
  }
  if (want_dw) std::memset(dw->untyped_data(), 0, dw->size_bytes());
  if (want_db) std::memset(db->untyped_data(), 0, db->size_bytes());
  if (g.element_count() == 0) {
    if (want_dx) std::memset(dx->untyped_data(), 0, dx->size_bytes());
    return ffi::Error::Success();
  }
  const int64_t in = p.in_size(), out = p.out_size();
  const int64_t count = PieceCount(pool, p.n);
  const int64_t chunk = ChunkImages(out);
  const size_t wsize = want_dw ? dw->element_count() : 0;
  std::vector<std::vector<float>> dw_part(count, std::vector<float>(wsize));
  std::vector<std::vector<double>> db_part(count, std::vector<double>(want_db ? p.o : 0));
  auto err = ForEachPiece(pool, p.n, count, [&](int64_t c, int64_t lo, int64_t hi) {
    thread_local std::vector<float> dk_chunk;
    std::vector<double>& dbs = db_part[c];
    for (int64_t b0 = lo; b0 < hi; b0 += chunk) {
      const int64_t images = std::min(chunk, hi - b0);
      float* gc = At(g.untyped_data(), b0, out);
      if (want_db) {
        double* __restrict acc = dbs.data();
        for (int64_t r = 0; r < images * p.oh * p.ow; ++r) {
          const float* __restrict row = gc + r * p.o;
          for (int64_t o = 0; o < p.o; ++o) acc[o] += row[o];
        }
      }
      const ConvProblem part = Slice(p, images);
      if (want_dx) {
        Execute(*GetConv(Kind::kBwdData, part), gc, w.untyped_data(),
                At(dx->untyped_data(), b0, in));
      }
      if (want_dw) {
        dk_chunk.resize(wsize);
        float* __restrict part_dk = dk_chunk.data();
        Execute(*GetConv(Kind::kBwdWeights, part), At(x.untyped_data(), b0, in), gc, part_dk);
        float* __restrict acc = dw_part[c].data();
        for (size_t i = 0; i < wsize; ++i) acc[i] += part_dk[i];
      }
    }
  });
  if (!err.success()) return err;
  if (want_dw) {
    float* sum = static_cast<float*>(dw->untyped_data());
    for (const auto& piece : dw_part) {
      for (size_t i = 0; i < wsize; ++i) sum[i] += piece[i];
    }
  }
  if (want_db) {
    float* sum = static_cast<float*>(db->untyped_data());
    for (int64_t o = 0; o < p.o; ++o) {
      double total = 0;
      for (const auto& piece : db_part) total += piece[o];
      sum[o] = static_cast<float>(total);
    }
  }
  return ffi::Error::Success();
}

#define CONV_ATTRS                                   \
  .Attr<I64Span>("window_strides")                   \
      .Attr<I64Span>("padding")                      \
      .Attr<I64Span>("rhs_dilation")                 \
      .Attr<int64_t>("feature_group_count")

// y = x, a buffer XLA cannot see into: fcnn's `taps` convolution (an elementwise chain XLA fuses)
// passes its output through this so that its readers read it instead of each recomputing it
// (fcnn/ops/convolution/algorithms.py, `materialized`). The result aliases the operand where XLA
// can donate it (no copy); otherwise it is copied.
ffi::Error MaterializeImpl(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (y->untyped_data() != x.untyped_data() && x.size_bytes() > 0) {
    std::memcpy(y->untyped_data(), x.untyped_data(), x.size_bytes());
  }
  return ffi::Error::Success();
}

}  // namespace

// The library is built with -fvisibility=hidden and XLA_FFI_DEFINE_HANDLER_SYMBOL
// does not mark its extern "C" function as exported, so declare them first.
#define ONEDNN_FFI_EXPORT __attribute__((visibility("default")))
extern "C" {
ONEDNN_FFI_EXPORT XLA_FFI_Error* OnednnConvFwd(XLA_FFI_CallFrame*);
ONEDNN_FFI_EXPORT XLA_FFI_Error* OnednnConvBwdData(XLA_FFI_CallFrame*);
ONEDNN_FFI_EXPORT XLA_FFI_Error* OnednnConvBwdWeights(XLA_FFI_CallFrame*);
ONEDNN_FFI_EXPORT XLA_FFI_Error* OnednnConvActFwd(XLA_FFI_CallFrame*);
ONEDNN_FFI_EXPORT XLA_FFI_Error* OnednnConvActBwd(XLA_FFI_CallFrame*);
ONEDNN_FFI_EXPORT XLA_FFI_Error* OnednnConvMembers(XLA_FFI_CallFrame*);
ONEDNN_FFI_EXPORT XLA_FFI_Error* OnednnMaterialize(XLA_FFI_CallFrame*);
ONEDNN_FFI_EXPORT XLA_FFI_Error* OnednnConvFwd3(XLA_FFI_CallFrame*);
ONEDNN_FFI_EXPORT XLA_FFI_Error* OnednnConvBwdData3(XLA_FFI_CallFrame*);
ONEDNN_FFI_EXPORT XLA_FFI_Error* OnednnConvBwdWeights3(XLA_FFI_CallFrame*);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnMaterialize, MaterializeImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvMembers, ConvMembersImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32R5>()  // x (forward, dK) or g (dX), per member
                                  .Arg<F32R5>()  // w (forward, dX) or g (dK), per member
                                  .Ret<F32R5>()  // y, dx or dw, per member
                                  CONV_ATTRS
                                  .Attr<int64_t>("kind"));  // 0 forward, 1 dX, 2 dK

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvFwd, ConvFwdImpl<4>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32R4>()  // x
                                  .Arg<F32R4>()  // w
                                  .Ret<F32R4>()  // y
                                  CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvFwd3, ConvFwdImpl<5>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32R5>()  // x
                                  .Arg<F32R5>()  // w
                                  .Ret<F32R5>()  // y
                                  CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdData, ConvBwdDataImpl<4>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32R4>()  // g (shape of y)
                                  .Arg<F32R4>()  // w
                                  .Ret<F32R4>()  // dx (shape of x)
                                  CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdData3, ConvBwdDataImpl<5>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32R5>()  // g (shape of y)
                                  .Arg<F32R5>()  // w
                                  .Ret<F32R5>()  // dx (shape of x)
                                  CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdWeights, ConvBwdWeightsImpl<4>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32R4>()  // x
                                  .Arg<F32R4>()  // g (shape of y)
                                  .Ret<F32R4>()  // dw (shape of w)
                                  CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdWeights3, ConvBwdWeightsImpl<5>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32R5>()  // x
                                  .Arg<F32R5>()  // g (shape of y)
                                  .Ret<F32R5>()  // dw (shape of w)
                                  CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvActFwd, ConvActFwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32R4>()                     // x
                                  .Arg<F32R4>()                     // w
                                  .Arg<F32R1>()                     // b, or zero-sized
                                  .Ret<F32R4>()                     // y
                                  CONV_ATTRS
                                  .Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvActBwd, ConvActBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32R4>()                        // g' (masked)
                                  .Arg<F32R4>()                        // x
                                  .Arg<F32R4>()                        // w
                                  .Ret<F32R4>()                        // dx, or zero-sized
                                  .Ret<F32R4>()                        // dw, or zero-sized
                                  .Ret<F32R1>()                        // db, or zero-sized
                                  CONV_ATTRS);

// ---------------------------------------------------------------------------
// Plain C helpers for the Python side (ctypes).
// ---------------------------------------------------------------------------
#ifndef FCNN_JAXLIB_VERSION
#error "FCNN_JAXLIB_VERSION: the jaxlib whose XLA FFI headers this is built against (build.py)"
#endif
#define FCNN_STR2(x) #x
#define FCNN_STR(x) FCNN_STR2(x)

extern "C" {

// What this library was built against, as JSON: fcnn refuses to register the handlers in a
// process whose jaxlib or oneDNN differs (fcnn/ops/onednn.py).
ONEDNN_FFI_EXPORT const char* OnednnBuildInfo() {
  return "{\"jaxlib\": \"" FCNN_JAXLIB_VERSION "\", "
         "\"xla_ffi_api\": [" FCNN_STR(XLA_FFI_API_MAJOR) ", " FCNN_STR(XLA_FFI_API_MINOR) "], "
         "\"onednn\": [" FCNN_STR(DNNL_VERSION_MAJOR) ", " FCNN_STR(DNNL_VERSION_MINOR) ", "
         FCNN_STR(DNNL_VERSION_PATCH) "], "
         "\"compiler\": \"" __VERSION__ "\"}";
}

// The cached primitives, one per line: the key (kind, N, H, W, C, OH, OW, O, KH, KW, SH, SW, DH,
// DW, PT, PB, PL, PR, G), oneDNN's implementation, and for (in0, in1, out) whether
// it is reordered (R) or not (-). Returns the full length; writes at most len - 1 chars + NUL.
ONEDNN_FFI_EXPORT int OnednnConvImplInfo(char* buf, int len) {
  std::string s;
  std::lock_guard<std::mutex> lock(g_cache_mu);
  for (const auto& [k, v] : *g_cache) {
    s += std::to_string(k[0]);
    for (size_t i = 1; i < k.size(); ++i) s += "," + std::to_string(k[i]);
    s += " -> " + v->impl;
    for (const Operand* op : {&v->in[0], &v->in[1], &v->out}) {
      s += op->reorder ? " R" : " -";
    }
    s += "\n";
  }
  if (len > 0) {
    std::strncpy(buf, s.c_str(), static_cast<size_t>(len) - 1);
    buf[len - 1] = '\0';
  }
  return static_cast<int>(s.size());
}

}  // extern "C"
