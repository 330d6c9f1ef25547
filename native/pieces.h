// The split of one call's work over XLA's own threads, shared by fcnn's native handlers.
//
// oneDNN's OpenMP build would run each call on a team of OpenMP threads beside XLA's pool,
// whose threads spin for a while after their own work: measured, a oneDNN call right after a
// multi-threaded XLA op lost 0.5 ms of 1.5. Instead each call cuts its work (the batch, or the
// rows of a batch norm) into one piece per thread of XLA's pool (ffi::ThreadPool), the calling
// thread taking part, and oneDNN runs single-threaded in each piece: the cores stay with XLA's
// threads.
#pragma once

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace fcnn_native {

namespace ffi = xla::ffi;

// OpenMP's thread count (a per-thread setting) at 1 while a piece runs, restored after it: the
// thread may be the caller's own (JAX runs programs on it, fcnn.memory), whose OpenMP setting
// belongs to whoever else uses OpenMP there (PyTorch's parallel regions, on the main thread).
class SingleThreaded {
 public:
  SingleThreaded() : before_(omp_get_max_threads()) {
    if (before_ != 1) omp_set_num_threads(1);
  }
  ~SingleThreaded() {
    if (before_ != 1) omp_set_num_threads(before_);
  }
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  int before_;
};

inline std::string Describe(const std::exception& e) {
  if (const auto* d = dynamic_cast<const dnnl::error*>(&e)) {
    return std::string("oneDNN error: ") + d->what() + " (status " +
           std::to_string(d->status) + ")";
  }
  return std::string("fcnn native: ") + e.what();
}

struct Pieces {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable finished;
  std::string error;  // the first piece's failure
};

// Runs work(piece, begin, end) for `count` contiguous pieces of [0, n): the caller takes pieces
// too, so a pool with no free thread delays nothing and cannot deadlock; a task that starts
// after the last piece was taken finds nothing to do.
template <typename Work>
ffi::Error ForEachPiece(ffi::ThreadPool& pool, int64_t n, int64_t count, Work work) {
  auto state = std::make_shared<Pieces>();
  auto run = [state, n, count, work] {
    for (int64_t c; (c = state->next.fetch_add(1)) < count;) {
      try {
        SingleThreaded one;
        work(c, c * n / count, (c + 1) * n / count);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(state->mu);
        if (state->error.empty()) state->error = Describe(e);
      }
      if (state->done.fetch_add(1) + 1 == count) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->finished.notify_all();
      }
    }
  };
  for (int64_t i = 1; i < count; ++i) pool.Schedule([run] { run(); });
  run();
  std::unique_lock<std::mutex> lock(state->mu);
  state->finished.wait(lock, [&] { return state->done.load() == count; });
  if (!state->error.empty()) return ffi::Error::Internal(state->error);
  return ffi::Error::Success();
}

inline int64_t PieceCount(ffi::ThreadPool& pool, int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>(n, pool.num_threads()));
}

}  // namespace fcnn_native
