"""benchmarks/sass_bounds.py: the static speed bound read from the kernels' SASS.

The parser, the control flow, the path search and the shared-memory model are checked on a
small hand-written listing; the slow test builds the real sm_90 kernels and fails when a
workload's bound is worse than the one recorded in benchmarks/sass_bounds.json, so a
regression in the compiled hot loops shows on every machine, GPU or not."""
import json

import pytest

import sass_bounds as sb  # benchmarks/sass_bounds.py (conftest puts benchmarks/ on the path)

# A kernel with one loop: per iteration two code words are xor-ed and popcounted (the work),
# a ballot's popcount (overhead) on a side path, and a diamond whose cheap side skips a block.
LISTING = """
.text._Z6kernelv:
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   MOV R1, RZ ;
.L_x_0:
        /*0020*/                   LDS.64 R2, [R4] ;
        /*0030*/                   LOP3.LUT R2, R2, R6, RZ, 0x3c, !PT ;
        /*0040*/                   LOP3.LUT R3, R3, R7, RZ, 0x3c, !PT ;
        /*0050*/                   POPC R2, R2 ;
        /*0060*/                   POPC R3, R3 ;
        /*0070*/                   IADD3 R8, R2, R3, RZ ;
        /*0080*/                   ISETP.GT.AND P0, PT, R8, R9, PT ;
        /*0090*/               @P0 BRA `(.L_x_1) ;
        /*00a0*/                   VOTE.ANY R10, PT, P0 ;
        /*00b0*/                   POPC R11, R10 ;
        /*00c0*/                   IMAD R12, R11, 0x4, R13 ;
        /*00d0*/                   STS [R12], R8 ;
.L_x_1:
        /*00e0*/                   IADD3 R4, R4, 0x8, RZ ;
        /*00f0*/                   ISETP.NE.AND P1, PT, R4, R5, PT ;
        /*0100*/               @P1 BRA `(.L_x_0) ;
        /*0110*/                   EXIT ;
.L_x_2:
        /*0120*/                   BRA `(.L_x_2);
"""


def test_parse_blocks_and_loops():
    (fn,) = sb.parse(LISTING)
    assert fn.name == "_Z6kernelv" and len(fn.instrs) == 19 and set(fn.labels) == {".L_x_0", ".L_x_1", ".L_x_2"}
    blocks = sb.basic_blocks(fn)
    loops = sb.innermost_loops(blocks)
    headers = sorted(fn.instrs[blocks[lp.header].start].addr for lp in loops)
    assert headers == [0x20, 0x120]  # the scan loop and the trailing self-loop padding


def test_work_excludes_ballot_popcounts():
    (fn,) = sb.parse(LISTING)
    sb.mark_work(fn, "POPC")
    assert [ins.addr for ins in fn.instrs if ins.is_work] == [0x50, 0x60]


def test_the_bound_takes_the_cheapest_path_per_unit_of_work():
    (fn,) = sb.parse(LISTING)
    loop = sb.hot_loop(fn, "POPC")
    # The path that skips the ballot: 11 instructions, 2 work POPCs, 2 POPCs in all. The POPC
    # pipe (0.5 a clock) needs 4 cycles, issue 2.75, so the loop does at most 0.5 work per cycle.
    assert loop.path.counts["issue"] == 11 and loop.path.work == 2 and loop.binding == "popc"
    assert loop.work_per_cycle == pytest.approx(0.5, rel=1e-4) and loop.work_fraction == pytest.approx(1.0, rel=1e-4)


def test_conditional_branches_fall_through():
    (fn,) = sb.parse(".text.f:\n        /*0000*/                   BRA.DIV UR4, `(.L_x_9) ;\n"
                     "        /*0010*/                   EXIT ;\n.L_x_9:\n        /*0020*/                   EXIT ;\n")
    blocks = sb.basic_blocks(fn)
    assert sorted(blocks[0].succ) == [1, 2]


@pytest.mark.parametrize("opcode, stride, wavefronts", [
    ("LDS.64", 8, 2),  # 64-bit codes back to back: conflict-free
    ("LDS.64", 32, 8),  # 256-bit codes: lanes 4 apart share a bank, 4 words a bank in each half-warp
    ("LDS.128", 16, 4),  # 128-bit codes read whole: conflict-free
    ("LDS.128", 32, 8),
    ("LDS", 4, 1),
    ("LDS.64", None, 1),  # unknown addresses: the least any access takes (a broadcast)
])
def test_shared_wavefronts(opcode, stride, wavefronts):
    assert sb.shared_wavefronts(opcode, stride) == wavefronts


def test_scan_lane_stride_from_the_kernel_name():
    assert sb.scan_lane_stride("_ZN8dsch_ext17tiled_scan_kernelINS_9CodeWidthImLi4EEENS_12CountVisitorEEEv") == 32
    assert sb.scan_lane_stride("_ZN8dsch_ext17tiled_scan_kernelINS_9CodeWidthIjLi1EEENS_12CountVisitorEEEv") == 4
    assert sb.scan_lane_stride("_ZN8dsch_ext17tiled_scan_kernelINS_9CodeWidthImLi0EEENS_12CountVisitorEEEv") is None
    # A swizzled stage's word w of 32 consecutive codes covers every bank, as if one word apart.
    swizzled = "_ZN8dsch_ext17tiled_scan_kernelINS_9CodeWidthImLi16EEENS_12CountVisitorENS_13SwizzledStageEEEv"
    assert sb.scan_lane_stride(swizzled) == 8
    assert sb.shared_wavefronts("LDS.64", sb.scan_lane_stride(swizzled)) == 2
    assert sb.shared_wavefronts("LDS.64", 128) == 32
    assert sb.scan_lane_stride("_ZN8dsch_ext16pair_tile_kernelIfEEvv") is None


def test_tensor_core_tiles_pay_their_shared_bytes():
    # Every lane of the tensor-core tiles reads or writes its own words: a 16-byte access of 32
    # lanes moves 512 bytes, at least 4 wavefronts, a store as much as a load.
    tile = "_ZN8dsch_ext33pair_tile_mma_split_at_use_kernelILi64ENS_13NearestVisitorIfEEEEvNS_12PairTilePlanEPKfS6_T0_"
    stride = sb.shared_lane_stride(tile)
    assert [sb.shared_wavefronts(op, stride) for op in ("LDS", "LDS.64", "LDS.128", "STS.128")] == [1, 2, 4, 4]
    assert sb.shared_lane_stride("_ZN8dsch_ext16pair_tile_kernelIfEEvv") is None
    cost = sb.PathCost.of([sb.Instr(0, "STS.128", False, ["[R1]", "R4"], None, "STS.128 [R1], R4")], stride)
    assert cost.counts["shared"] == 4


def test_host_launches_counts_call_sites_and_torch_calls(tmp_path, monkeypatch):
    source = tmp_path / "op.cu"
    source.write_text("""
int helper(int x) { return x; }
std::tuple<at::Tensor, at::Tensor> op_cuda(const at::Tensor& a,
                                           int64_t k) {
  // gpu::launch( in a comment is not a launch
  at::Tensor z = at::zeros({3}, a.options());
  if (k > 1) {
    gpu::launch("k", &kernel, 1, 32, 0, stream, z.data_ptr<int32_t>());
  }
  launch_tiled_scan<Width>("scan", plan, stream, z.const_data_ptr<uint8_t>());
  const at::Tensor t = std::get<0>(at::topk(z.narrow(0, 0, 2), 1, 0, false, true));
  return {z, t};
}
void after() { gpu::launch("not this function's", &kernel, 1, 32, 0, stream); }
""")
    monkeypatch.setattr(sb, "CUDA_DIR", str(tmp_path))
    assert sb.host_launches("op.cu", "op_cuda") == 1 + 1 + 1 + sb.TORCH_LAUNCHES["at::topk"]
    source.write_text(source.read_text().replace("at::topk", "at::sort"))
    with pytest.raises(LookupError, match="at::sort"):
        sb.host_launches("op.cu", "op_cuda")


def test_launch_constants_read_the_gpu_value():
    assert sb.launch_constant("kScanMinChunkRows") >= 1024  # not the emulation's small value
    assert sb.launch_constant("kMaxQueriesPerWarp") == 4


@pytest.mark.slow
@pytest.mark.skipif(sb.nvdisasm() is None, reason="needs nvdisasm (the nvidia-cuda-nvdisasm wheel)")
def test_hot_loops_are_no_slower_than_recorded_and_collectives_are_uniform(sm90_cubins):
    with open(sb.RECORD) as f:
        recorded = json.load(f)
    sources = sorted({wl.source for wl in sb.WORKLOADS.values()})
    bounds = sb.kernel_bounds(sources, sm90_cubins)
    # The scans' warp collectives run under conditions ptxas sees as warp-uniform: no
    # divergent-collective fallback (BRA.DIV / WARPSYNC) in any of their hot loops.
    fallbacks = {name[:90]: b.divergent_collectives for name, b in bounds.items()
                 if "tiled_scan_kernel" in name and b.divergent_collectives}
    assert not fallbacks, f"divergent-collective fallbacks in the scans' hot loops: {fallbacks}"
    now = sb.workload_bounds(bounds)
    assert set(now) == set(recorded)
    worse = {wid: (recorded[wid]["bound_ms"], r["bound_ms"]) for wid, r in now.items()
             if r["bound_ms"] > recorded[wid]["bound_ms"] * 1.005}
    assert not worse, f"static bounds slower than recorded (recorded ms, now ms): {worse}"


def test_tensor_core_products_count_their_fp32_multiply_adds():
    # One m16n8k8 TF32 product is 1,024 multiply-adds (32 FFMAs' worth); a 3xTF32 kernel spends
    # three of them on each fp32 product; the H100 retires about 946 a clock per SM.
    assert sb.work_weight("_ZN8dsch_ext9other_kernelEv", "HMMA.1688.F32.TF32") == 32
    assert sb.work_weight("_ZN8dsch_ext33pair_tile_mma_split_at_use_kernelILi64E", "HMMA.1688.F32.TF32") == 32 / 3
    grad_tile = "_ZN8dsch_ext22center_grad_mma_kernelILi0ELb0EEEvNS_12PairTilePlanEPKfS4_S4_PfS5_"
    assert sb.work_weight(grad_tile, "HMMA.1688.F32.TF32") == 32 / 3
    assert sb.shared_lane_stride(grad_tile) == sb.DISTINCT_WORDS
    assert sb.tensor_cycles("HMMA.1688.F32.TF32") == pytest.approx(1024 / 946, rel=1e-3)
    assert sb.pipe_of("HMMA.1688.F32.TF32") == "tensor"
