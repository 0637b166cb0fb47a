// The CPU emulation of CUDA's execution model (see emulator.h).
#include "emulator.h"

#include "block_state.h"

#include "../common/tf32_math.h"

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
    case Collective::kMmaTf32: return "mma.sync.m16n8k8.tf32";
  }
  return "?";
}

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

// d += A B for one warp's m16n8k8 fragments (csrc/cuda/mma_tf32.cuh), given
// each lane's MmaFragments; with g = lane / 4, t = lane % 4 a lane holds
// A[g][t], A[g + 8][t], A[g][t + 4], A[g + 8][t + 4], B[t][g], B[t + 4][g] and
// C[g][2t], C[g][2t + 1], C[g + 8][2t], C[g + 8][2t + 1].
void form_warp_mma(const uint64_t (&lanes)[32]) {
  const auto frag = [&](int lane) { return reinterpret_cast<const MmaFragments*>(lanes[lane]); };
  float a[16][8], b[8][8];  // A row-major, B column by column: b[n][k] = B[k][n]
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const float* fa = frag(lane)->a;
    const float* fb = frag(lane)->b;
    a[g][t] = fa[0];
    a[g + 8][t] = fa[1];
    a[g][t + 4] = fa[2];
    a[g + 8][t + 4] = fa[3];
    b[g][t] = fb[0];
    b[g][t + 4] = fb[1];
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    float* d = frag(lane)->d;
    for (int r = 0; r < 2; ++r) {
      for (int c = 0; c < 2; ++c) d[2 * r + c] = tf32_mma_dot8(d[2 * r + c], a[g + 8 * r], b[2 * t + c]);
    }
  }
}

void warp_mma_tf32_m16n8k8(float (&d)[4], const float (&a)[4], const float (&b)[2]) {
  const MmaFragments mine{d, a, b};
  warp_collective(Collective::kMmaTf32, 0xffffffffu, reinterpret_cast<uintptr_t>(&mine), 0, 32);
}

void* shared_array(const void* site, size_t bytes) {
  return current_block("__shared__").shared_array(current.linear, site, bytes);
}

void* dynamic_shared() { return current_block("extern __shared__").dynamic_shared(); }

void unsupported(const char* what) {
  throw std::runtime_error(std::string(what) + " is not supported by the CUDA emulation");
}

}  // namespace dsch_ext::emu
