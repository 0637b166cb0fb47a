// Every launch constant of the CUDA kernels whose value under the CPU
// emulation differs from the GPU's, in one place: small buffers, chunks and
// samples make test-sized inputs take the multi-chunk, overflow and redo paths.
// The production emulation build keeps the first (GPU) value of each.
#pragma once

#include <cstdint>

#include "device_runtime.cuh"

namespace dsch_ext::launch {

// The query-tiled Hamming scan (hamming_tiled_scan.cuh): shared memory per stage.
constexpr int64_t kScanStageBytes = gpu::small_under_emulation(16384, 512);
// hamming_topk.cu and hamming_range.cu: the fewest database rows a block's chunk holds.
constexpr int64_t kScanMinChunkRows = gpu::small_under_emulation(2048, 96);
// hamming_topk.cu's sampled bound: sample codes per wanted neighbour, at least kMinSample
// (or the whole database), at most kMaxSample and a 16th of the database.
constexpr int64_t kSamplePerK = gpu::small_under_emulation(64, 4);
constexpr int64_t kMinSample = gpu::small_under_emulation(65536, 16);
constexpr int64_t kMaxSample = gpu::small_under_emulation(1 << 20, 64);
// hamming_topk.cu's candidate list per query: the largest of kListFactor k, k + kListSlack
// and kListOverExpected times the codes expected under the bound (small under emulation, so
// that tests overflow it and take the exact redo). At k = 10^5 of 10^6 codes the list is
// about 3 k: its keys take twice the output's 12 bytes a neighbour.
constexpr int64_t kListFactor = gpu::small_under_emulation(2, 2);
constexpr int64_t kListSlack = gpu::small_under_emulation(1024, 3);
constexpr int64_t kListOverExpected = gpu::small_under_emulation(2, 1);
// hamming_topk.cu's select: queries per torch topk call, so that its outputs (16 bytes a
// neighbour) stay under this many bytes beside the lists.
constexpr int64_t kSelectBytes = gpu::small_under_emulation(int64_t{16} << 20, 4096);
// hamming_range.cu: the one pass's per-(query, chunk) segments, at most this many bytes (small
// under emulation, so that tests overflow them and take the second pass).
constexpr int64_t kRangeSegmentBytes = gpu::small_under_emulation(int64_t{256} << 20, 12 * 32 * 40);
// hamming_distance.cu: queries per block row.
constexpr int kDistanceQueriesPerBlock = static_cast<int>(gpu::small_under_emulation(16, 3));
// gmm_log_resp.cu: elements of the transformed-points buffer per block of points (128 MB of
// float32 on a GPU).
constexpr int64_t kGmmFullBufferElements = gpu::small_under_emulation(32 << 20, 1000);
// segment_gram.cu: elements of the partial-sums buffer.
constexpr int64_t kSegmentPartialElements = gpu::small_under_emulation(int64_t{16} << 20, 4096);

}  // namespace dsch_ext::launch
