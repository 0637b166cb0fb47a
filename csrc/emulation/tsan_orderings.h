// What the emulation tells ThreadSanitizer about CUDA's orderings
// (block_state.h, emulator.cpp).
#pragma once

// ThreadSanitizer must see exactly the orderings CUDA guarantees: a barrier
// orders every thread of the block, a warp collective orders its lanes, and
// consecutive blocks on one set of threads are ordered. The mutexes that run
// the emulation would order far more (any two threads that touch the block's
// bookkeeping one after the other), hiding races, so under TSan
// (DSCH_EMULATION_TSAN; the emulator itself is not instrumented) every lock is
// taken with TSan's synchronisation ignored and the guaranteed orderings are
// announced explicitly with release / acquire on tokens.
#if defined(DSCH_EMULATION_TSAN)
extern "C" void AnnotateIgnoreSyncBegin(const char* file, int line);
extern "C" void AnnotateIgnoreSyncEnd(const char* file, int line);
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
namespace dsch_ext::emu::sync {
struct QuietSync {
  QuietSync() { AnnotateIgnoreSyncBegin(__FILE__, __LINE__); }
  ~QuietSync() { AnnotateIgnoreSyncEnd(__FILE__, __LINE__); }
};
// Inside a quiet region: lifts the quiet for an announcement (ignores nest).
struct AnnounceOutsideQuiet {
  AnnounceOutsideQuiet() { AnnotateIgnoreSyncEnd(__FILE__, __LINE__); }
  ~AnnounceOutsideQuiet() { AnnotateIgnoreSyncBegin(__FILE__, __LINE__); }
};
inline void order_release(void* token) { __tsan_release(token); }
inline void order_acquire(void* token) { __tsan_acquire(token); }
}  // namespace dsch_ext::emu::sync
#else
namespace dsch_ext::emu::sync {
struct QuietSync {};
struct AnnounceOutsideQuiet {};
inline void order_release(void*) {}
inline void order_acquire(void*) {}
}  // namespace dsch_ext::emu::sync
#endif
