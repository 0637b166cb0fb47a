// The CPU emulation of CUDA's execution model (see emulator.h).
#include "emulator.h"

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

// ThreadSanitizer must see exactly the orderings CUDA guarantees: a barrier
// orders every thread of the block, a warp collective orders its lanes, and
// consecutive blocks on one set of threads are ordered. The mutexes that run
// the emulation would order far more (any two threads that touch the block's
// bookkeeping one after the other), hiding races, so under TSan
// (DSCH_EMULATION_TSAN; this file itself is not instrumented) every lock is
// taken with TSan's synchronisation ignored and the guaranteed orderings are
// announced explicitly with release / acquire on tokens.
#if defined(DSCH_EMULATION_TSAN)
extern "C" void AnnotateIgnoreSyncBegin(const char* file, int line);
extern "C" void AnnotateIgnoreSyncEnd(const char* file, int line);
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
namespace {
struct QuietSync {
  QuietSync() { AnnotateIgnoreSyncBegin(__FILE__, __LINE__); }
  ~QuietSync() { AnnotateIgnoreSyncEnd(__FILE__, __LINE__); }
};
// Inside a quiet region: lifts the quiet for an announcement (ignores nest).
struct AnnounceOutsideQuiet {
  AnnounceOutsideQuiet() { AnnotateIgnoreSyncEnd(__FILE__, __LINE__); }
  ~AnnounceOutsideQuiet() { AnnotateIgnoreSyncBegin(__FILE__, __LINE__); }
};
void order_release(void* token) { __tsan_release(token); }
void order_acquire(void* token) { __tsan_acquire(token); }
}  // namespace
#else
namespace {
struct QuietSync {};
struct AnnounceOutsideQuiet {};
void order_release(void*) {}
void order_acquire(void*) {}
}  // namespace
#endif

namespace dsch_ext::emu {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::atoi(v);
}

const char* collective_name(Collective kind) {
  switch (kind) {
    case Collective::kSyncWarp: return "__syncwarp";
    case Collective::kBallot: return "__ballot_sync";
    case Collective::kMatchAny: return "__match_any_sync";
    case Collective::kShflIdx: return "__shfl_sync";
    case Collective::kShflXor: return "__shfl_xor_sync";
    case Collective::kShflDown: return "__shfl_down_sync";
    case Collective::kShflUp: return "__shfl_up_sync";
    case Collective::kReduceAdd: return "__reduce_add_sync";
  }
  return "?";
}

namespace {

// Thrown into the threads of a block once a check failed, to unwind them.
struct BlockAborted {};

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

struct PendingCollective {
  Collective kind;
  unsigned mask;
  int width;
  unsigned arrived = 0;
  bool done = false;
  uint64_t values[32] = {};
  int params[32] = {};
  uint64_t results[32] = {};
};

}  // namespace

// One block's threads, barrier, warp rendezvous and shared memory. Every
// field is guarded by `mu`.
class BlockState {
 public:
  BlockState(Dim3 block_dim, size_t dynamic_bytes)
      : block_dim_(block_dim),
        nthreads_(static_cast<int>(block_dim.x * block_dim.y * block_dim.z)),
        dynamic_bytes_(dynamic_bytes),
        exited_(nthreads_, 0),
        pending_((nthreads_ + 31) / 32),
        warp_cv_(new std::condition_variable[(nthreads_ + 31) / 32]) {
    dynamic_ = static_cast<unsigned char*>(std::malloc(dynamic_bytes_ > 0 ? dynamic_bytes_ : 1));
  }
  ~BlockState() {
    for (auto& [site, slot] : shared_) std::free(slot.data);
    std::free(dynamic_);
  }

  // A new block on this state: fresh barrier and warps, poisoned shared memory.
  void reset(Dim3 block_idx) {
    const QuietSync quiet;
    std::lock_guard<std::mutex> lk(mu_);
    block_idx_ = block_idx;
    running_ = nthreads_;
    nexited_ = 0;
    std::fill(exited_.begin(), exited_.end(), 0);
    barrier_arrived_ = 0;
    for (auto& w : pending_) w.clear();
    for (auto& [site, slot] : shared_) std::memset(slot.data, 0xFF, slot.bytes);
    std::memset(dynamic_, 0xFF, dynamic_bytes_ > 0 ? dynamic_bytes_ : 1);
    error_.clear();
  }

  const std::string& error() const { return error_; }
  Dim3 block_idx() const { return block_idx_; }

  // `passed`: how many barriers this thread passed in this block. Two tokens,
  // so that a fast thread's arrival at the next barrier cannot reach a slow
  // thread still leaving this one. (TSan skips release / acquire while it
  // ignores synchronisation, so they stay outside the quiet lock.)
  void syncthreads(int tid, uint64_t passed) {
    char* token = &barrier_token_[passed & 1];
    order_release(token);
    {
      const QuietSync quiet;
      std::unique_lock<std::mutex> lk(mu_);
      arrive_at_barrier(lk, tid);
    }
    order_acquire(token);
  }

  uint64_t collective(int tid, Collective kind, unsigned mask, uint64_t value, int param, int width) {
    std::shared_ptr<PendingCollective> c;
    uint64_t result;
    {
      const QuietSync quiet;
      std::unique_lock<std::mutex> lk(mu_);
      result = join_collective(lk, tid, kind, mask, value, param, width, c);
    }
    order_acquire(c.get());  // every lane's release came before the collective completed
    return result;
  }

 private:
  void arrive_at_barrier(std::unique_lock<std::mutex>& lk, int tid) {
    throw_if_failed();
    if (nexited_ > 0) {
      fail(tid, "__syncthreads reached after " + thread_name(first_exited()) +
                    " of the block exited: a barrier in divergent code");
    }
    const uint64_t generation = barrier_generation_;
    if (++barrier_arrived_ == nthreads_) {
      barrier_arrived_ = 0;
      ++barrier_generation_;
      running_ += nthreads_ - 1;  // the waiters are runnable from now on
      cv_.notify_all();
      return;
    }
    wait_blocked(lk, tid, cv_, [&] { return barrier_generation_ != generation; });
  }

  uint64_t join_collective(std::unique_lock<std::mutex>& lk, int tid, Collective kind, unsigned mask,
                           uint64_t value, int param, int width, std::shared_ptr<PendingCollective>& c) {
    throw_if_failed();
    const int warp = tid / 32, lane = tid % 32;
    const int lanes_in_warp = std::min(32, nthreads_ - warp * 32);
    const unsigned existing = lanes_in_warp == 32 ? 0xffffffffu : ((1u << lanes_in_warp) - 1u);
    const std::string what = std::string(collective_name(kind)) + "(mask " + hex(mask) + ")";
    if (((mask >> lane) & 1u) == 0) fail(tid, what + " called by a lane that its mask leaves out");
    if ((mask & ~existing) != 0) fail(tid, what + " names lanes that this warp does not have");
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0) fail(tid, what + " with width " + std::to_string(width));
    for (int l = 0; l < 32; ++l) {
      if (((mask >> l) & 1u) && exited_[warp * 32 + l]) {
        fail(tid, what + ": lane " + std::to_string(l) + " of the mask already exited");
      }
    }
    for (auto& p : pending_[warp]) {
      if ((p->mask & mask) == 0) continue;
      if (p->mask != mask) {
        fail(tid, what + " overlaps a pending " + collective_name(p->kind) + "(mask " + hex(p->mask) +
                      ") of lanes " + hex(p->arrived));
      }
      if (p->kind != kind) {
        fail(tid, what + " met " + collective_name(p->kind) + " of lanes " + hex(p->arrived) +
                      ": the lanes of one mask must call the same collective");
      }
      c = p;
    }
    if (!c) {
      c = std::make_shared<PendingCollective>();
      c->kind = kind;
      c->mask = mask;
      c->width = width;
      pending_[warp].push_back(c);
    }
    if (c->width != width) fail(tid, what + ": lanes disagree on the width");
    c->values[lane] = value;
    c->params[lane] = param;
    c->arrived |= 1u << lane;
    {
      AnnounceOutsideQuiet announce;  // the release must be seen by TSan
      order_release(c.get());
    }
    if (c->arrived == mask) {
      complete(tid, *c);
      auto& list = pending_[warp];
      list.erase(std::find(list.begin(), list.end(), c));
      running_ += __builtin_popcount(mask) - 1;
      warp_cv_[warp].notify_all();  // only this warp's lanes wait on it
      return c->results[lane];
    }
    wait_blocked(lk, tid, warp_cv_[warp], [&] { return c->done; });
    return c->results[lane];
  }

 public:

  void* shared_array(int tid, const void* site, size_t bytes) {
    unsigned char* data;
    {
      const QuietSync quiet;
      std::lock_guard<std::mutex> lk(mu_);
      throw_if_failed();
      auto it = shared_.find(site);
      if (it == shared_.end()) {
        Slot slot{static_cast<unsigned char*>(std::malloc(bytes > 0 ? bytes : 1)), bytes};
        std::memset(slot.data, 0xFF, bytes > 0 ? bytes : 1);
        it = shared_.emplace(site, slot).first;
        AnnounceOutsideQuiet announce;
        order_release(slot.data);  // its allocation and poisoning come before every use
      } else if (it->second.bytes != bytes) {
        fail(tid, "one __shared__ declaration asked for " + std::to_string(it->second.bytes) + " and " +
                      std::to_string(bytes) + " bytes");
      }
      data = it->second.data;
    }
    order_acquire(data);
    return data;
  }

  void* dynamic_shared() { return dynamic_; }

  // The thread finished the kernel (normally or by an error).
  void thread_exit(int tid, const char* error) {
    const QuietSync quiet;
    std::lock_guard<std::mutex> lk(mu_);
    if (error != nullptr && error_.empty()) error_ = error;
    exited_[tid] = 1;
    ++nexited_;
    --running_;
    if (!error_.empty()) {
      notify_everyone();
      return;
    }
    if (barrier_arrived_ > 0) {
      record(tid, "exited while " + std::to_string(barrier_arrived_) +
                      " threads of the block wait at __syncthreads: a barrier in divergent code");
      return;
    }
    const int warp = tid / 32, lane = tid % 32;
    for (auto& p : pending_[warp]) {
      if ((p->mask >> lane) & 1u) {
        record(tid, std::string("exited without joining ") + collective_name(p->kind) + "(mask " + hex(p->mask) +
                        ") that lanes " + hex(p->arrived) + " wait in");
        return;
      }
    }
    if (running_ == 0 && any_waiting()) record(tid, "exited, leaving the block deadlocked: " + describe_waiting());
  }

 private:
  struct Slot {
    unsigned char* data;
    size_t bytes;
  };

  template <typename Pred>
  void wait_blocked(std::unique_lock<std::mutex>& lk, int tid, std::condition_variable& cv, Pred done) {
    --running_;
    if (running_ == 0) {
      fail(tid, "deadlock: every thread of the block waits and none can go on: " + describe_waiting());
    }
    cv.wait(lk, [&] { return done() || !error_.empty(); });
    throw_if_failed();
  }

  void notify_everyone() {
    cv_.notify_all();
    for (size_t w = 0; w < pending_.size(); ++w) warp_cv_[w].notify_all();
  }

  bool any_waiting() const {
    if (barrier_arrived_ > 0) return true;
    for (const auto& w : pending_) {
      if (!w.empty()) return true;
    }
    return false;
  }

  std::string describe_waiting() const {
    std::ostringstream s;
    if (barrier_arrived_ > 0) s << barrier_arrived_ << " threads at __syncthreads; ";
    for (size_t w = 0; w < pending_.size(); ++w) {
      for (const auto& p : pending_[w]) {
        s << "warp " << w << ": lanes " << hex(p->arrived) << " in " << collective_name(p->kind) << "(mask "
          << hex(p->mask) << "); ";
      }
    }
    s << nexited_ << " threads exited";
    return s.str();
  }

  void complete(int tid, PendingCollective& c) {
    unsigned ballot = 0;
    for (int l = 0; l < 32; ++l) {
      if (((c.mask >> l) & 1u) && c.values[l] != 0) ballot |= 1u << l;
    }
    uint64_t sum = 0;
    for (int l = 0; l < 32; ++l) {
      if ((c.mask >> l) & 1u) sum += c.values[l];
    }
    for (int l = 0; l < 32; ++l) {
      if (((c.mask >> l) & 1u) == 0) continue;
      const int base = l & ~(c.width - 1), offset = l - base;
      int src = l;
      switch (c.kind) {
        case Collective::kSyncWarp: c.results[l] = 0; continue;
        case Collective::kBallot: c.results[l] = ballot; continue;
        case Collective::kReduceAdd: c.results[l] = static_cast<uint32_t>(sum); continue;
        case Collective::kMatchAny: {
          unsigned peers = 0;
          for (int m = 0; m < 32; ++m) {
            if (((c.mask >> m) & 1u) && c.values[m] == c.values[l]) peers |= 1u << m;
          }
          c.results[l] = peers;
          continue;
        }
        case Collective::kShflIdx: src = base + (((c.params[l] % c.width) + c.width) % c.width); break;
        case Collective::kShflXor: src = (offset ^ c.params[l]) < c.width ? base + (offset ^ c.params[l]) : l; break;
        case Collective::kShflDown: src = offset + c.params[l] < c.width ? l + c.params[l] : l; break;
        case Collective::kShflUp: src = offset - c.params[l] >= 0 ? l - c.params[l] : l; break;
      }
      if (((c.mask >> src) & 1u) == 0) {
        fail(tid, std::string(collective_name(c.kind)) + "(mask " + hex(c.mask) + "): lane " + std::to_string(l) +
                      " reads lane " + std::to_string(src) + ", which is not in the mask (undefined on a GPU)");
      }
      c.results[l] = c.values[src];
    }
    c.done = true;
  }

  std::string thread_name(int tid) const {
    const int x = tid % static_cast<int>(block_dim_.x);
    const int y = (tid / static_cast<int>(block_dim_.x)) % static_cast<int>(block_dim_.y);
    const int z = tid / static_cast<int>(block_dim_.x * block_dim_.y);
    std::ostringstream s;
    s << "thread (" << x << ", " << y << ", " << z << ")";
    return s.str();
  }

  int first_exited() const {
    for (int t = 0; t < nthreads_; ++t) {
      if (exited_[t]) return t;
    }
    return -1;
  }

  void record(int tid, const std::string& why) {
    if (!error_.empty()) return;
    std::ostringstream s;
    s << "block (" << block_idx_.x << ", " << block_idx_.y << ", " << block_idx_.z << ") " << thread_name(tid)
      << ": " << why;
    error_ = s.str();
    notify_everyone();
  }

  [[noreturn]] void fail(int tid, const std::string& why) {
    record(tid, why);
    throw BlockAborted{};
  }

  void throw_if_failed() const {
    if (!error_.empty()) throw BlockAborted{};
  }

  Dim3 block_dim_;
  int nthreads_;
  size_t dynamic_bytes_;
  std::mutex mu_;
  std::condition_variable cv_;
  Dim3 block_idx_;
  int running_ = 0;
  int nexited_ = 0;
  std::vector<char> exited_;
  int barrier_arrived_ = 0;
  uint64_t barrier_generation_ = 0;
  char barrier_token_[2] = {0, 0};
  std::vector<std::vector<std::shared_ptr<PendingCollective>>> pending_;
  std::unique_ptr<std::condition_variable[]> warp_cv_;
  std::map<const void*, Slot> shared_;
  unsigned char* dynamic_ = nullptr;
  std::string error_;
};

namespace {

BlockState& current_block(const char* what) {
  if (current.block == nullptr) {
    throw std::runtime_error(std::string(what) + " called outside an emulated kernel launch");
  }
  return *current.block;
}

void check_launch(const char* name, Dim3 grid, Dim3 block, size_t dynamic_smem) {
  auto reject = [&](const std::string& why) {
    throw std::runtime_error(std::string("emulated launch of ") + name + ": invalid configuration: " + why);
  };
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) reject("a grid dimension is 0");
  if (block.x == 0 || block.y == 0 || block.z == 0) reject("a block dimension is 0");
  if (threads > 1024) reject(std::to_string(threads) + " threads per block (at most 1024)");
  if (block.z > 64) reject("blockDim.z > 64");
  if (grid.x > 2147483647u) reject("gridDim.x > 2^31 - 1");
  if (grid.y > 65535u || grid.z > 65535u) reject("gridDim.y or gridDim.z > 65535");
  if (dynamic_smem > 227u * 1024u) reject(std::to_string(dynamic_smem) + " bytes of dynamic shared memory");
}

// One set of OS threads, one per CUDA thread of a block, that runs blocks one
// after another (the threads are kept between blocks: creating them per block
// dominated the emulation's time).
class BlockRunner {
 public:
  BlockRunner(Dim3 grid, Dim3 block, size_t smem, void (*body)(void*), void* arg)
      : grid_(grid), block_(block), nthreads_(static_cast<int>(block.x * block.y * block.z)),
        state_(block, smem), body_(body), arg_(arg) {}

  // Runs the blocks whose positions in `order` `next` hands out; returns the first error.
  std::string run(std::atomic<size_t>& next, const std::vector<size_t>& order) {
    std::vector<std::thread> threads;
    threads.reserve(nthreads_);
    for (int t = 0; t < nthreads_; ++t) threads.emplace_back([this, t] { thread_main(t); });
    std::string error;
    for (;;) {
      const size_t i = next.fetch_add(1, std::memory_order_relaxed);  // relaxed: no ordering between runners
      if (i >= order.size()) break;
      const size_t b = order[i];
      const Dim3 bidx(static_cast<unsigned>(b % grid_.x), static_cast<unsigned>((b / grid_.x) % grid_.y),
                      static_cast<unsigned>(b / (static_cast<size_t>(grid_.x) * grid_.y)));
      state_.reset(bidx);
      order_release(&start_token_);  // the block's threads start after this (and the last block)
      {
        const QuietSync quiet;
        std::lock_guard<std::mutex> lk(mu_);
        block_idx_ = bidx;
        remaining_ = nthreads_;
        ++generation_;
        cv_.notify_all();
      }
      {
        const QuietSync quiet;
        std::unique_lock<std::mutex> lk(mu_);
        done_cv_.wait(lk, [&] { return remaining_ == 0; });
      }
      order_acquire(&done_token_);  // everything the block did comes before the next block
      if (!state_.error().empty()) {
        error = state_.error();
        break;
      }
    }
    {
      const QuietSync quiet;
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    for (auto& th : threads) th.join();
    return error;
  }

 private:
  void thread_main(int t) {
    current.block = &state_;
    current.linear = t;
    threadIdx = Dim3(t % block_.x, (t / block_.x) % block_.y, t / (block_.x * block_.y));
    blockDim = block_;
    gridDim = grid_;
    uint64_t seen = 0;
    for (;;) {
      {
        // Quiet: this lock is also taken by threads that finished this block, and
        // must not order their work before this thread's.
        const QuietSync quiet;
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) break;
        seen = generation_;
        blockIdx = block_idx_;
        current.barriers = 0;
      }
      order_acquire(&start_token_);
      const char* error = nullptr;
      std::string message;
      try {
        body_(arg_);
      } catch (const BlockAborted&) {
      } catch (const std::exception& e) {
        message = std::string("exception in the kernel: ") + e.what();
        error = message.c_str();
      }
      state_.thread_exit(t, error);
      order_release(&done_token_);
      const QuietSync quiet;
      std::lock_guard<std::mutex> lk(mu_);
      if (--remaining_ == 0) done_cv_.notify_one();
    }
    current.block = nullptr;
  }

  Dim3 grid_, block_;
  int nthreads_;
  BlockState state_;
  void (*body_)(void*);
  void* arg_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  uint64_t generation_ = 0;
  Dim3 block_idx_;
  int remaining_ = 0;
  bool stop_ = false;
  char done_token_ = 0;
  char start_token_ = 0;
};

std::mutex launch_mutex;  // launches on the emulated device run one at a time, in order

}  // namespace

void run_grid(const char* name, Dim3 grid, Dim3 block, size_t dynamic_smem, void (*body)(void*), void* arg) {
  check_launch(name, grid, block, dynamic_smem);
  std::lock_guard<std::mutex> lk(launch_mutex);
  const size_t nblocks = static_cast<size_t>(grid.x) * grid.y * grid.z;
  std::vector<size_t> order(nblocks);
  std::iota(order.begin(), order.end(), size_t{0});
  std::mt19937_64 rng(static_cast<uint64_t>(env_int("DSCH_EMULATION_SEED", 1)) * 0x9E3779B97F4A7C15ull + nblocks);
  std::shuffle(order.begin(), order.end(), rng);
  const int concurrent = std::max(1, std::min<int>(env_int("DSCH_EMULATION_CONCURRENT", 2), static_cast<int>(nblocks)));
  std::atomic<size_t> next{0};
  std::vector<std::unique_ptr<BlockRunner>> runners;
  for (int r = 0; r < concurrent; ++r) runners.push_back(std::make_unique<BlockRunner>(grid, block, dynamic_smem, body, arg));
  std::vector<std::string> errors(concurrent);
  std::vector<std::thread> drivers;
  for (int r = 0; r < concurrent; ++r) {
    drivers.emplace_back([&, r] { errors[r] = runners[r]->run(next, order); });
  }
  for (auto& d : drivers) d.join();
  for (const auto& e : errors) {
    if (!e.empty()) throw std::runtime_error(std::string("emulated kernel ") + name + ": " + e);
  }
}

void syncthreads() { current_block("__syncthreads").syncthreads(current.linear, current.barriers++); }

uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int param, int width) {
  return current_block(collective_name(kind)).collective(current.linear, kind, mask, value, param, width);
}

void* shared_array(const void* site, size_t bytes) {
  return current_block("__shared__").shared_array(current.linear, site, bytes);
}

void* dynamic_shared() { return current_block("extern __shared__").dynamic_shared(); }

void unsupported(const char* what) {
  throw std::runtime_error(std::string(what) + " is not supported by the CUDA emulation");
}

}  // namespace dsch_ext::emu
