// One emulated block's state (emulator.cpp runs the blocks): its threads'
// barrier, the warp rendezvous of the collectives, its shared memory, and the
// record of the first check that failed. Included by emulator.cpp only.
#pragma once

#include <condition_variable>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "emulator.h"
#include "tsan_orderings.h"

namespace dsch_ext::emu {

using sync::AnnounceOutsideQuiet;
using sync::QuietSync;
using sync::order_acquire;
using sync::order_release;

// d += A B for one warp's tensor-core product (emulator.cpp), given each lane's MmaFragments.
void form_warp_mma(const uint64_t (&lanes)[32]);

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
    if (c.kind == Collective::kMmaTf32) {
      if (c.mask != 0xffffffffu) fail(tid, "mma.sync(mask " + hex(c.mask) + "): the instruction needs all 32 lanes");
      form_warp_mma(c.values);
      c.done = true;
      return;
    }
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

}  // namespace dsch_ext::emu
