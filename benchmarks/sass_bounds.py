"""Static speed bounds of the CUDA kernels, read from their own sm_90 SASS (no GPU needed).

    python benchmarks/sass_bounds.py            # the table: per workload, what binds, bound, % of roofline
    python benchmarks/sass_bounds.py --json     # {"H1": {"bound_ms": ..., "roofline_pct": ..., "binding": ...}}
    python benchmarks/sass_bounds.py --kernels  # every kernel's hot loop, instruction counts by pipe
    python benchmarks/sass_bounds.py --record   # write benchmarks/sass_bounds.json (the test's reference)
    python benchmarks/sass_bounds.py --recorded # print the recorded bounds (no compiling)

How: each ``csrc/cuda/*.cu`` a workload needs is compiled to an sm_90 cubin (nvcc, the flags of
the build) and disassembled (``nvdisasm``: the CUDA toolkit's, or the ``nvidia-cuda-nvdisasm``
wheel's). In every kernel the loops are found from the control flow (basic blocks, back
edges); the hot loop is the innermost loop doing the most of the kernel's work (``POPC`` for
the Hamming scans, ``HMMA`` for the tensor-core float kernels, ``FFMA`` for the others). Every path through one iteration of it is
costed: its instructions by pipe, each pipe's count divided by what an H100 SM retires per
clock (4 warp-instructions issued; FP32 128 lanes; the integer pipe 64; POPC and the other
conversion / special-function units 16; FP64 64; shuffles 32; shared memory one 128-byte
wavefront: the scans' staged codes, one per lane, take as many as their bank conflicts need,
other accesses one, the least any access takes; the tensor cores an m16n8k8 TF32 product,
1,024 multiply-adds, in 1.08 cycles, the H100's dense TF32 peak), the largest
quotient is the iteration's time, and the path with the most work per cycle sets the bound.
A workload's bound adds its scan passes (each over all of its code pairs or multiply-adds, on
132 SMs at 1.98 GHz); the roofline is the same work at the bound pipe's peak (POPC: a B-bit
pair costs B / 32 of them; float: FFMA at the FP32 peak). A tensor-core kernel's work is
counted in the same unit: an HMMA is the fp32 multiply-adds it contributes (1,024 / 32 FFMA,
divided by the products a 3xTF32 kernel spends on one), so its % of the FP32 roofline can pass
100.

H5 (one query) is costed otherwise: each block's one busy warp runs its chunk on one of the
SM's four schedulers (a quarter of each pipe), and the op's launches, counted from its host
code (the project's launch sites and the torch calls that launch), cost 3 us each.

What it ignores, so it is an upper bound on speed, never a measurement: dependency and memory
stalls, barriers, L2 and DRAM traffic, bank conflicts other than the scans' staged loads, the
instructions outside the hot loop, small kernels, launch overhead and clock changes. A measured
time can only be slower.
"""
import argparse
import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")
RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sass_bounds.json")

SMS, CLOCK_HZ = 132, 1.98e9  # H100 SXM
RATES = {  # warp-instructions (or wavefronts) per SM per clock
    "issue": 4.0, "fp32": 4.0, "int": 2.0, "popc": 0.5, "xu": 0.5, "fp64": 2.0, "shfl": 1.0, "shared": 1.0,
    "tensor": 1.0,  # cycles (tensor_cycles)
}
# H100 SXM dense TF32: 494.7 TFLOP/s = 946 multiply-adds per SM per clock at 132 SMs, 1.98 GHz.
TF32_MACS_PER_CYCLE = 494.7e12 / 2 / (SMS * CLOCK_HZ)
# Kernels that form each fp32 product from several TF32 ones (3xTF32: lo*hi + hi*lo + hi*hi).
# The tensor-core tiles: the pair scans (pair_tile_mma.cuh) and the centre distances' backward.
TENSOR_TILES = r"pair_tile_mma|center_grad_mma"
SPLIT_PRODUCTS = {TENSOR_TILES: 3}
FP32 = {"FFMA", "FADD", "FMUL", "FFMA32I", "FADD32I", "FMUL32I", "FSWZADD"}
FP64 = {"DFMA", "DADD", "DMUL", "DSETP", "DMNMX"}
INT = {"IMAD", "IADD3", "IADD", "LOP3", "LOP", "SHF", "SHL", "SHR", "LEA", "ISETP", "IMNMX", "VIMNMX", "SEL", "FSEL",
       "FSETP", "FMNMX", "PRMT", "MOV", "IABS", "BMSK", "SGXT", "P2R", "R2P", "PLOP3", "VIADD", "IMUL", "ICMP",
       "VOTE", "VABSDIFF", "VIADDMNMX", "IDP", "FCHK"}
XU = {"FLO", "BREV", "MUFU", "I2F", "F2I", "F2F", "I2I", "FRND", "I2FP", "F2IP"}
SHARED = {"LDS", "STS", "LDSM", "ATOMS"}
TENSOR_PREFIXES = ("HMMA", "IMMA", "DMMA", "BMMA", "HGMMA", "IGMMA", "QGMMA")
BRANCHES = {"BRA", "BRX", "JMP", "JMX"}
ENDS = {"EXIT", "RET", "BPT", "KILL"}


def pipe_of(opcode: str) -> Optional[str]:
    """The pipe an opcode occupies beyond its issue slot (None: the issue slot only)."""
    base = opcode.split(".")[0]
    if base == "POPC":
        return "popc"
    if base in FP32:
        return "fp32"
    if base in FP64:
        return "fp64"
    if base in INT:
        return "int"
    if base in XU:
        return "xu"
    if base == "SHFL":
        return "shfl"
    if base in SHARED:
        return "shared"
    if base.startswith(TENSOR_PREFIXES):
        return "tensor"
    return None


def tensor_cycles(opcode: str) -> float:
    """Tensor-pipe cycles of one warp's tensor instruction on one SM."""
    if opcode.startswith("HMMA.1688.F32.TF32"):
        return 16 * 8 * 8 / TF32_MACS_PER_CYCLE
    return 1.0  # unknown shapes: one cycle, fewer than any real product takes


def work_weight(kernel: str, opcode: str) -> float:
    """FFMA-equivalents (32 fp32 multiply-adds) a work instruction contributes."""
    if opcode.startswith("HMMA.1688.F32.TF32"):
        split = next((n for pat, n in SPLIT_PRODUCTS.items() if re.search(pat, kernel)), 1)
        return 16 * 8 * 8 / 32 / split
    return 1.0


def access_bytes(opcode: str) -> int:
    for mod, size in ((".128", 16), (".64", 8), (".U8", 1), (".S8", 1), (".U16", 2), (".S16", 2)):
        if mod in opcode:
            return size
    return 4


def shared_wavefronts(opcode: str, lane_stride: Optional[int] = None) -> int:
    """Wavefronts of one warp's shared access of ``access_bytes`` per lane. With the lanes'
    stride known (the scans stage one code per lane, codes back to back), bank conflicts follow
    from the addresses: 64-bit accesses go 16 lanes a phase, 128-bit ones 8, and each phase takes
    as many wavefronts as the most distinct 4-byte words any of the 32 banks holds. Unknown
    addresses: one wavefront, the least any access takes (all lanes reading one word is a
    broadcast), so the bound stays an upper bound on speed."""
    width = access_bytes(opcode)
    if lane_stride is None:
        return 1
    if lane_stride == DISTINCT_WORDS:
        return max(1, 32 * width // 128)
    lanes_per_phase = 32 if width <= 4 else 128 // width
    total = 0
    for phase in range(0, 32, lanes_per_phase):
        words_in_bank: Dict[int, set] = {}
        for lane in range(phase, phase + lanes_per_phase):
            first = lane * lane_stride // 4
            for word in range(first, first + max(1, width // 4)):
                words_in_bank.setdefault(word % 32, set()).add(word)
        total += max(len(words) for words in words_in_bank.values())
    return total


# A lane stride meaning "every lane its own words, layout unknown": an access then moves 32
# times its width in bytes, at least that many 128-byte wavefronts (bank conflicts add more).
DISTINCT_WORDS = -1


def shared_lane_stride(kernel: str) -> Optional[int]:
    """What shared_wavefronts may assume of a kernel's shared accesses: a scan's loads of its
    staged codes have a known stride (scan_lane_stride); every shared access of the tensor-core
    pair tiles (fragments, staged centres, the epilogue's tile) has each lane on its own words,
    none a broadcast, so it costs at least its bytes over 128."""
    if re.search(TENSOR_TILES, kernel):
        return DISTINCT_WORDS
    return scan_lane_stride(kernel)


def scan_lane_stride(kernel: str) -> Optional[int]:
    """A tiled scan's bytes between two lanes' staged codes: its CodeWidth<Word, NW> (fixed
    words only; a runtime word count has no fixed stride). A SwizzledStage layout (in the
    kernel's name) rotates each row's words so that one word of 32 consecutive codes covers
    every bank: as conflict-free as codes one word apart, so its stride counts as one word."""
    found = re.search(r"tiled_scan_kernel.*?CodeWidthI([htjm])Li(\d+)E", kernel)
    if not found or found.group(2) == "0":
        return None
    word = {"h": 1, "t": 2, "j": 4, "m": 8}[found.group(1)]
    return word if "SwizzledStage" in kernel else word * int(found.group(2))


@dataclasses.dataclass
class Instr:
    addr: int
    opcode: str
    predicated: bool
    operands: List[str]
    target: Optional[str]  # a branch's label
    text: str
    is_work: float = 0.0  # the work it does, 0 if it is no work instruction (mark_work)

    @property
    def unconditional_branch(self) -> bool:
        """A BRA always taken: no guard and no condition operand (BRA.DIV, BRA P2, ... fall through)."""
        return (self.opcode.split(".")[0] in BRANCHES and not self.predicated and self.opcode == "BRA"
                and len(self.operands) <= 1)


@dataclasses.dataclass
class Function:
    name: str
    instrs: List[Instr]
    labels: Dict[str, int]  # label -> instruction index


_FUNC = re.compile(r"^\.text\.(\S+):$")
_LABEL = re.compile(r"^(\.L_x_\d+):$")
_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*?);")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def parse(text: str) -> List[Function]:
    """nvdisasm's listing of a cubin as functions of instructions with their labels."""
    functions, current = [], None
    for line in text.splitlines():
        m = _FUNC.match(line.strip())
        if m:
            current = Function(m.group(1), [], {})
            functions.append(current)
            continue
        if current is None:
            continue
        m = _LABEL.match(line.strip())
        if m:
            current.labels[m.group(1)] = len(current.instrs)
            continue
        m = _INSTR.match(line)
        if m:
            target = _TARGET.search(m.group(4))
            operands = [o.strip() for o in m.group(4).split(",") if o.strip()]
            current.instrs.append(Instr(int(m.group(1), 16), m.group(3), bool(m.group(2)), operands,
                                        target.group(1) if target else None, line.strip()))
    return functions


@dataclasses.dataclass
class Block:
    start: int  # instruction indices [start, end)
    end: int
    succ: List[int]  # block indices


def basic_blocks(fn: Function) -> List[Block]:
    n = len(fn.instrs)
    leaders = {0} | set(fn.labels.values())
    for i, ins in enumerate(fn.instrs):
        base = ins.opcode.split(".")[0]
        if base in BRANCHES or base in ENDS:
            leaders.add(i + 1)
    starts = sorted(s for s in leaders if s < n)
    index_of = {s: b for b, s in enumerate(starts)}
    blocks = []
    for b, s in enumerate(starts):
        e = starts[b + 1] if b + 1 < len(starts) else n
        blocks.append(Block(s, e, []))
    for b, blk in enumerate(blocks):
        last = fn.instrs[blk.end - 1]
        base = last.opcode.split(".")[0]
        if base in BRANCHES and last.target in fn.labels:
            blk.succ.append(index_of[fn.labels[last.target]])
        falls = not (base in ENDS and not last.predicated) and not last.unconditional_branch
        if falls and b + 1 < len(blocks):
            blk.succ.append(b + 1)
    return blocks


@dataclasses.dataclass
class Loop:
    header: int  # block index
    body: frozenset  # block indices, the header included (a natural loop: any layout)


def dominators(blocks: List[Block]) -> List[set]:
    """dom[b]: the blocks on every path from the entry to b (iterative data flow)."""
    n = len(blocks)
    preds = [[] for _ in range(n)]
    for b, blk in enumerate(blocks):
        for s in blk.succ:
            preds[s].append(b)
    everything = set(range(n))
    dom = [everything.copy() for _ in range(n)]
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for b in range(1, n):
            new = set.intersection(*(dom[p] for p in preds[b])) if preds[b] else set()
            new = new | {b}
            if new != dom[b]:
                dom[b], changed = new, True
    return dom


def natural_loops(blocks: List[Block]) -> List[Loop]:
    """One loop per header: the blocks that reach one of its back edges (u -> h, h dominating u)
    without passing through h."""
    dom = dominators(blocks)
    preds = [[] for _ in blocks]
    for b, blk in enumerate(blocks):
        for s in blk.succ:
            preds[s].append(b)
    bodies: Dict[int, set] = {}
    for u, blk in enumerate(blocks):
        for h in blk.succ:
            if h in dom[u]:
                body = bodies.setdefault(h, {h})
                stack = [u]
                while stack:
                    x = stack.pop()
                    if x not in body:
                        body.add(x)
                        stack.extend(preds[x])
    return [Loop(h, frozenset(body)) for h, body in bodies.items()]


def innermost_loops(blocks: List[Block]) -> List[Loop]:
    loops = natural_loops(blocks)
    return [lp for lp in loops if not any(o.header != lp.header and o.header in lp.body for o in loops)]


@dataclasses.dataclass
class PathCost:
    counts: Dict[str, float]  # pipe -> warp-instructions (shared: wavefronts); "issue" every instruction
    work: float  # POPC or FFMA instructions on the path
    cycles: float  # per SM, one warp's iteration
    binding: str

    @staticmethod
    def of(instrs: List[Instr], lane_stride: Optional[int] = None) -> "PathCost":
        counts = {pipe: 0.0 for pipe in RATES}
        work = 0.0
        for ins in instrs:
            counts["issue"] += 1
            pipe = pipe_of(ins.opcode)
            if pipe == "shared":
                known = ins.opcode.startswith("LDS") or lane_stride == DISTINCT_WORDS
                counts["shared"] += shared_wavefronts(ins.opcode, lane_stride if known else None)
            elif pipe == "tensor":
                counts["tensor"] += tensor_cycles(ins.opcode)
            elif pipe is not None:
                counts[pipe] += 1
            work += ins.is_work
        times = {pipe: counts[pipe] / RATES[pipe] for pipe in RATES}
        binding = max(times, key=times.get)
        return PathCost(counts, work, times[binding], binding)


def mark_work(fn: Function, work_opcode: str) -> None:
    """Mark the work instructions: every FFMA or HMMA (weighted by work_weight); a POPC only
    where its source was last written (in address order) by a LOP3, the xor of a query and a
    code word: the popcounts of ballot and vote masks (a warp's ranks and counts) are overhead."""
    for i, ins in enumerate(fn.instrs):
        ins.is_work = 0.0
        if ins.opcode.split(".")[0] != work_opcode:
            continue
        if work_opcode != "POPC":
            ins.is_work = work_weight(fn.name, ins.opcode)
            continue
        source = ins.operands[1].split(".")[0] if len(ins.operands) > 1 else ""
        for j in range(i - 1, -1, -1):
            if fn.instrs[j].operands and fn.instrs[j].operands[0].split(".")[0] == source:
                ins.is_work = float(fn.instrs[j].opcode.split(".")[0] == "LOP3")
                break


def _block_costs(fn: Function, blocks: List[Block], loop: Loop) -> Dict[int, PathCost]:
    """Each body block's instructions costed alone."""
    stride = shared_lane_stride(fn.name)
    return {b: PathCost.of(fn.instrs[blocks[b].start:blocks[b].end], stride) for b in loop.body}


def _best_path(blocks: List[Block], loop: Loop, costs: Dict[int, PathCost], pipe: str) -> Tuple[float, List[int]]:
    """The most work per cycle of `pipe` over the paths of one iteration (header back to
    header inside the body), and that path: a linear-fractional longest path on the body's
    acyclic graph, by bisection on the ratio."""
    order, seen = [], set()

    def visit(b):  # post-order over forward edges: a topological order reversed
        seen.add(b)
        for s_ in blocks[b].succ:
            if s_ in loop.body and s_ != loop.header and s_ not in seen:
                visit(s_)
        order.append(b)

    visit(loop.header)

    def longest(lam):
        value, choice = {}, {}
        for b in order:  # successors first
            # A sliver of issue time keeps empty paths (no work, no cost) from counting as infinitely fast.
            own = costs[b].work - lam * (costs[b].counts[pipe] / RATES[pipe] + 1e-6 * costs[b].counts["issue"])
            best, pick = -float("inf"), None
            for s_ in blocks[b].succ:
                if s_ == loop.header:
                    cand, nxt = 0.0, None
                elif s_ in value:
                    cand, nxt = value[s_], s_
                else:
                    continue
                if cand > best:
                    best, pick = cand, nxt
            value[b], choice[b] = own + best, pick
        path, b = [loop.header], choice.get(loop.header)
        while b is not None:
            path.append(b)
            b = choice.get(b)
        return value[loop.header], path

    if longest(0.0)[0] <= 0:
        return 0.0, []
    low, high = 0.0, 1e6
    for _ in range(60):
        mid = (low + high) / 2
        if longest(mid)[0] >= 0:
            low = mid
        else:
            high = mid
    return low, longest(low)[1]


@dataclasses.dataclass
class LoopBound:
    kernel: str
    first_addr: int
    last_addr: int
    work_per_cycle: float  # the bound: work instructions retired per SM cycle, at most
    binding: str  # the pipe that sets it
    path: PathCost  # the path that attains it
    work_rate: float  # the work pipe's peak (work instructions per SM cycle)
    divergent_collectives: int = 0  # BRA.DIV / WARPSYNC in the loop: ptxas could not prove a collective warp-uniform

    @property
    def work_fraction(self) -> float:
        """The share of the work pipe's peak the loop can reach: the % of its roofline."""
        return self.work_per_cycle / self.work_rate


def hot_loop(fn: Function, work_opcode: str) -> Optional[LoopBound]:
    mark_work(fn, work_opcode)
    blocks = basic_blocks(fn)
    best = None
    for loop in innermost_loops(blocks):
        costs = _block_costs(fn, blocks, loop)
        if not any(c.work for c in costs.values()):
            continue
        # For every pipe, the best path's work per cycle of that pipe; the least of them bounds
        # every path (a path's time is at least each pipe's), so it is the loop's bound.
        per_pipe = {pipe: _best_path(blocks, loop, costs, pipe) for pipe in RATES}
        binding = min((pipe for pipe in per_pipe if per_pipe[pipe][1]), key=lambda p: per_pipe[p][0])
        ratio, path = per_pipe[binding]
        cost = PathCost.of([fn.instrs[i] for b in path for i in range(blocks[b].start, blocks[b].end)],
                           shared_lane_stride(fn.name))
        body = [fn.instrs[i] for b in loop.body for i in range(blocks[b].start, blocks[b].end)]
        fallbacks = sum(ins.opcode.startswith(("BRA.DIV", "WARPSYNC")) for ins in body)
        bound = LoopBound(fn.name, fn.instrs[blocks[min(loop.body)].start].addr,
                          fn.instrs[blocks[max(loop.body)].end - 1].addr, ratio, binding, cost,
                          RATES["popc" if work_opcode == "POPC" else "fp32"], fallbacks)
        if best is None or cost.work > best.path.work:  # the hot loop: the most work on its path
            best = bound
    return best


# ---------------------------------------------------------------- tools and builds


def nvcc() -> Optional[str]:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    path = os.path.join(home, "bin", "nvcc")
    return path if os.path.exists(path) else shutil.which("nvcc")


def nvdisasm() -> Optional[str]:
    """The toolkit's nvdisasm, or the nvidia-cuda-nvdisasm wheel's."""
    found = shutil.which("nvdisasm")
    if found:
        return found
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidates = [os.path.join(home, "bin", "nvdisasm")]
    try:
        import nvidia  # the namespace the NVIDIA wheels install into

        for base in nvidia.__path__:
            for sub in ("cu13/bin", "cu12/bin", "cuda_nvdisasm/bin"):
                candidates.append(os.path.join(base, sub, "nvdisasm"))
    except ImportError:
        pass
    return next((c for c in candidates if os.path.exists(c)), None)


PTXAS_REPORT = "-Xptxas=-v,-warn-lmem-usage,-warn-spills"  # ptxas's per-kernel usage on stderr; same code


def compile_cubin(source: str, out_dir: str) -> str:
    """csrc/cuda/<source> built for sm_90 into out_dir/<name>.cubin, with ptxas's -v report
    in out_dir/<name>.ptxas (tests/test_cuda_sources.py reads it: one build serves both)."""
    from torch.utils import cpp_extension

    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    out = os.path.join(out_dir, os.path.splitext(source)[0] + ".cubin")
    cmd = [nvcc(), "-cubin", "-arch=sm_90", "-O3", "-std=c++20", "--expt-relaxed-constexpr",
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
           "-D__CUDA_NO_HALF2_OPERATORS__", PTXAS_REPORT, *includes, os.path.join(CUDA_DIR, source), "-o", out]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source}:\n{run.stderr[-3000:]}")
    with open(os.path.splitext(out)[0] + ".ptxas", "w") as f:
        f.write(run.stderr)
    return out


def compile_cubins(sources: List[str], out_dir: str, jobs: Optional[int] = None) -> Dict[str, str]:
    """{source: cubin} for the given sources, built into out_dir MAX_JOBS (default 2) at a time."""
    jobs = jobs or int(os.environ.get("MAX_JOBS", "2"))
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        return dict(zip(sources, pool.map(lambda s: compile_cubin(s, out_dir), sources)))


def disassemble(cubin: str) -> str:
    tool = nvdisasm()
    if tool is None:
        raise FileNotFoundError("nvdisasm not found: install the nvidia-cuda-nvdisasm wheel (pip) or a CUDA toolkit")
    run = subprocess.run([tool, "-c", cubin], capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        raise RuntimeError(f"nvdisasm failed on {cubin}: {run.stderr[-2000:]}")
    return run.stdout


# ---------------------------------------------------------------- workloads


@dataclasses.dataclass
class Pass:
    kernel: str  # a regex the mangled kernel name must match
    share: float  # of the workload's work this pass does


@dataclasses.dataclass
class Workload:
    source: str
    lane_ops: float  # the work in lane operations of the work pipe: POPCs (B / 32 a code pair) or FFMAs
    work_pipe: str  # "popc" or "fp32"
    passes: List[Pass]
    what: str


def _scan(visitor: str, words: int) -> str:
    return rf"tiled_scan_kernel.*CodeWidthImLi{words}E.*{visitor}"


def _topk(pairs: float, words: int, what: str) -> Workload:
    # hamming_topk.cu: a sample pass over a 16th of the database and one append pass (the exact
    # redo's passes run only for the tiles of queries the sample misled).
    return Workload("hamming_topk.cu", pairs * 2 * words, "popc",
                    [Pass(_scan("HistogramVisitor", words), 1 / 16), Pass(_scan("AppendVisitor", words), 1.0)], what)


def _pairs(source: str, kernel: str, ffma: float, what: str) -> Workload:
    return Workload(source, ffma, "fp32", [Pass(kernel, 1.0)], what)


WORKLOADS = {
    "H1": _topk(1e6 * 1000, 1, "10^6 x 64 bits, 1,000 queries, k = 1000"),
    "H2": _topk(1e6 * 1000, 1, "10^6 x 64 bits, 1,000 queries, k = 10"),
    "H3": _topk(1e6 * 100, 4, "10^6 x 256 bits, 100 queries, k = 10"),
    "H4": _topk(1e7 * 100, 1, "10^7 x 64 bits, 100 queries, k = 1000"),
    "H7": _topk(1e6 * 100, 16, "10^6 x 1024 bits, 100 queries, k = 10"),
    # hamming_range.cu: one pass writing per-(query, chunk) segments; a second, ordered write
    # pass where some pair's hits overflow its segment (R2).
    "R1": Workload("hamming_range.cu", 1e6 * 1000 * 2, "popc", [Pass(_scan("RangeSegmentVisitor", 1), 1.0)],
                   "10^6 x 64 bits, 1,000 queries, range search, hits within the segments"),
    "R2": Workload("hamming_range.cu", 1e6 * 1000 * 2, "popc", [Pass(_scan("RangeSegmentVisitor", 1), 1.0),
                                                                 Pass(_scan("RangeCollectVisitor", 1), 1.0)],
                   "10^6 x 64 bits, 1,000 queries, range search, hits overflowing the segments"),
    # Float kernels: one FFMA per point-centre-dimension for a dot product, two for the diagonal
    # E-step's (a p - b)^2, and D^2 per point and component for x L_k in the full one.
    "G1": _pairs("gmm_log_resp.cu", r"pair_tile_mma_split_at_use_kernelILi64E.*FullGmmVisitor",
                 1e4 * 1000 * 64 * 64,
                 "full-covariance E-step, N = 10^4, K = 1000, D = 64, float32"),
    "G5": _pairs("gmm_log_resp.cu", r"pair_tile_mma_split_at_use_kernelILi128E.*FullGmmVisitor",
                 1e4 * 1000 * 128 * 128,
                 "full-covariance E-step, N = 10^4, K = 1000, D = 128, float32"),
    "G3": _pairs("gmm_log_resp.cu", r"pair_tile_kernelIf.*ScaledDiffPair", 2 * 1e4 * 1000 * 64,
                 "diagonal E-step, N = 10^4, K = 1000, D = 64, float32"),
    "C1": _pairs("center_distances.cu", r"pair_tile_mma_split_at_use_kernelILi64E.*DistanceVisitor", 65536 * 1000 * 64,
                 "center_distances forward, N = 65,536, K = 1000, D = 64, float32"),
    # The backward's two passes over the gradient (squared Euclidean): G C for the points,
    # G^T X for the centres, one FFMA-equivalent per point, centre and dimension each.
    "C3": Workload("center_distances_backward.cu", 2 * 65536 * 1000 * 64, "fp32",
                   [Pass(r"center_grad_mma_kernelILi0ELb0E", 0.5), Pass(r"center_grad_mma_kernelILi1ELb0E", 0.5)],
                   "center_distances backward, N = 65,536, K = 1000, D = 64, float32"),
    "C2": _pairs("nearest_center.cu", r"pair_tile_mma_split_at_use_kernelILi64E.*NearestVisitor", 1e6 * 1000 * 64,
                 "nearest_center, N = 10^6, K = 1000, D = 64, float32"),
}


# ---------------------------------------------------------------- one query: launches and one warp

LAUNCH_SECONDS = 3e-6  # what a launch costs, as H5's goal counts it
# Calls of the host code that launch kernels on CUDA, and how many (at most); a call that is
# in neither table stops the count, so a new torch op in an op's host code cannot go uncounted.
TORCH_LAUNCHES = {"at::zeros": 1, "at::arange": 1, "index_select": 1, "at::topk": 2}
TORCH_NO_LAUNCH = {"at::empty", "at::Scalar", "at::Tensor", "at::kInt", "at::kLong", "at::Device", "size", "sizes",
                   "options", "dtype", "device", "data_ptr", "const_data_ptr", "narrow", "contiguous"}
LAUNCH_CALLS = r"gpu::launch\s*\(|launch_tiled_scan\s*<"


def host_function(source: str, name: str) -> str:
    """The body of host function `name` in csrc/cuda/<source>, comments removed."""
    with open(os.path.join(CUDA_DIR, source)) as f:
        code = re.sub(r"//[^\n]*", "", f.read())
    start = re.search(rf"\b{name}\s*\([^;{{]*\)\s*{{", code)
    if start is None:
        raise LookupError(f"{source}: no host function {name}")
    depth, i = 0, start.end() - 1
    for i in range(start.end() - 1, len(code)):
        depth += {"{": 1, "}": -1}.get(code[i], 0)
        if depth == 0:
            break
    return code[start.end():i]


def host_launches(source: str, name: str) -> int:
    """Kernel launches of one call of host function `name` (each call site once: its loops
    run once for one query): the project's launches and the torch calls that launch."""
    body = host_function(source, name)
    count = len(re.findall(LAUNCH_CALLS, body))
    for call in re.findall(r"(at::\w+)\s*[({<]", body) + re.findall(r"\.(\w+)\s*[(<]", body):
        if call in TORCH_LAUNCHES:
            count += TORCH_LAUNCHES[call]
        elif call not in TORCH_NO_LAUNCH:
            raise LookupError(f"{source}: {name} calls {call}: say in TORCH_LAUNCHES or TORCH_NO_LAUNCH how many "
                              "kernels it launches")
    return count


def launch_constant(name: str) -> int:
    """A launch constant's GPU value (csrc/cuda/launch_constants.cuh, hamming_tiled_scan.cuh)."""
    for header in ("launch_constants.cuh", "hamming_tiled_scan.cuh"):
        with open(os.path.join(CUDA_DIR, header)) as f:
            found = re.search(rf"\b{name}\s*=\s*(?:gpu::small_under_emulation\()?\s*(\d+)", f.read())
        if found:
            return int(found.group(1))
    raise LookupError(f"no launch constant {name}")


def one_query_seconds(loop: LoopBound, rows: float) -> float:
    """One query's scan of `rows` 64-bit codes: one block per chunk (at least
    kScanMinChunkRows codes), and in each block one warp visits them, its slots being
    kMaxQueriesPerWarp (the idle ones too), on one of the SM's four schedulers (a quarter of
    each pipe); co-resident blocks are taken to use different schedulers, the best case."""
    chunks = max(1, min(4 * SMS, int(rows // launch_constant("kScanMinChunkRows"))))
    slots = launch_constant("kMaxQueriesPerWarp")
    groups = loop.path.work / (2 * slots)  # 32-code groups an iteration visits (2 POPCs a 64-bit pair)
    cycles = max(loop.path.counts[p] / (RATES[p] / 4) for p in RATES) / groups * (rows / chunks / 32)
    rounds = -(-chunks // (4 * SMS))  # blocks past four per SM wait for a scheduler
    return cycles * rounds / CLOCK_HZ


def loop_of(bounds: Dict[str, LoopBound], kernel: str, workload: str) -> LoopBound:
    """The hot loop of the first kernel whose name matches `kernel` (a regex)."""
    for name, loop in bounds.items():
        if re.search(kernel, name):
            return loop
    raise LookupError(f"{workload}: no kernel matches {kernel!r}")


def h5_bound(bounds: Dict[str, LoopBound]) -> dict:
    """H5: one query, k = 100, over 10^6 64-bit codes: its sample and append passes (the sample
    a 16th of the codes) as one warp per block runs them, and its launches at 3 us each."""
    ndb = 1e6
    scans = 0.0
    for kernel, rows in ((_scan("HistogramVisitor", 1), ndb / 16), (_scan("AppendVisitor", 1), ndb)):
        loop = loop_of(bounds, kernel, "H5")
        scans += one_query_seconds(loop, rows)
    launches = host_launches("hamming_topk.cu", "hamming_topk_cuda")
    seconds = scans + launches * LAUNCH_SECONDS
    return {"bound_ms": seconds * 1e3, "scan_ms": scans * 1e3, "launches": launches,
            "binding": f"{launches} launches at 3 us, scans {scans * 1e6:.1f} us",
            "workload": "10^6 x 64 bits, 1 query, k = 100"}


def kernel_bounds(sources: List[str], cubin_dir: Optional[str] = None) -> Dict[str, LoopBound]:
    """{kernel (mangled): its hot loop's bound} for the given sources (their cubins from
    cubin_dir where it has them, built here otherwise)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        given = {s: os.path.join(cubin_dir, os.path.splitext(s)[0] + ".cubin") for s in sources} if cubin_dir else {}
        cubins = {s: c for s, c in given.items() if os.path.exists(c)}
        cubins.update(compile_cubins([s for s in sources if s not in cubins], tmp))
        for source in sources:
            for fn in parse(disassemble(cubins[source])):
                loop = hot_loop(fn, "POPC") or hot_loop(fn, "HMMA") or hot_loop(fn, "FFMA")
                if loop is not None:
                    out[fn.name] = loop
    return out


def pass_name(kernel: str) -> str:
    for pattern, name in ((r"(Histogram|Count|Collect|Append|Segment)Visitor", None),
                          (r"pair_tile_mma", "pair tile, 3xTF32"), (r"center_grad_mma", "gradient tile, 3xTF32"),
                          (r"pair_tile_kernel", "pair tile")):
        found = re.search(pattern, kernel)
        if found:
            return name or found.group(1).lower()
    return kernel[:40]


def workload_bounds(bounds: Dict[str, LoopBound]) -> Dict[str, dict]:
    """Per workload: its passes' bound added up (each pass's lane operations at its hot loop's
    work per cycle, a work instruction being 32 lanes), against the work pipe's peak."""
    result = {}
    for wid, wl in WORKLOADS.items():
        seconds, binding = 0.0, []
        for p in wl.passes:
            loop = loop_of(bounds, p.kernel, wid)
            seconds += p.share * wl.lane_ops / (32 * loop.work_per_cycle) / (SMS * CLOCK_HZ)
            binding.append(f"{pass_name(loop.kernel)}: {loop.binding}")
        roofline = wl.lane_ops / (32 * RATES[wl.work_pipe]) / (SMS * CLOCK_HZ)
        result[wid] = {"bound_ms": seconds * 1e3, "roofline_ms": roofline * 1e3,
                       "roofline_pct": 100 * roofline / seconds, "binding": ", ".join(binding), "workload": wl.what}
    result["H5"] = h5_bound(bounds)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the workloads' bounds as JSON")
    parser.add_argument("--kernels", action="store_true", help="print every kernel's hot loop")
    parser.add_argument("--cubin-dir", help="take <source>.cubin from here instead of compiling")
    parser.add_argument("--record", action="store_true",
                        help=f"write the bounds to {os.path.relpath(RECORD, ROOT)}, the test's reference")
    parser.add_argument("--recorded", action="store_true",
                        help=f"print the bounds recorded in {os.path.relpath(RECORD, ROOT)} (no compiling)")
    args = parser.parse_args(argv)
    if args.recorded:
        with open(RECORD) as f:
            print_table(json.load(f))
        return 0
    sources = sorted({wl.source for wl in WORKLOADS.values()})
    bounds = kernel_bounds(sources, args.cubin_dir)
    result = workload_bounds(bounds)
    if args.record:
        with open(RECORD + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        os.replace(RECORD + ".tmp", RECORD)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    if args.kernels:
        for name, b in sorted(bounds.items()):
            c = b.path.counts
            print(f"{name[:110]}\n    hot loop {b.first_addr:#x}-{b.last_addr:#x}: its best path {int(c['issue'])} "
                  f"instructions, {int(b.path.work)} work, int {int(c['int'])}, popc {int(c['popc'])}, fp32 "
                  f"{int(c['fp32'])}, tensor {c['tensor']:.0f} cycles, shared {int(c['shared'])} wavefronts; {b.binding}-bound at "
                  f"{100 * b.work_fraction:.0f} % of the work pipe; {b.divergent_collectives} divergent-collective "
                  f"fallbacks (BRA.DIV / WARPSYNC)")
    print_table(result)
    return 0


def print_table(result: Dict[str, Dict]) -> None:
    """One line a workload: its static bound and, where it has one, its roofline."""
    print(f"{'id':<4} {'static bound':>13} {'roofline':>10} {'% roofline':>11}  binding (per pass)")
    for wid, r in result.items():
        if "roofline_ms" in r:
            print(f"{wid:<4} {r['bound_ms']:>10.3f} ms {r['roofline_ms']:>7.3f} ms {r['roofline_pct']:>10.0f} %  "
                  f"{r['binding']}")
        else:
            print(f"{wid:<4} {r['bound_ms']:>10.3f} ms {'-':>10} {'-':>11}  {r['binding']}")


if __name__ == "__main__":
    sys.exit(main())
