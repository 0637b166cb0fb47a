"""What a GPU user relies on beyond equal answers: no host synchronisation inside an op (so
CUDA-graph capture works), results that ignore torch's TF32 switch, errors instead of wild
reads for tensors on the wrong device, and 64-bit counts in the Hamming top-k. They run
whenever a GPU is visible (scripts/gpu_check.sh); without one, tests/test_emulation.py and
tests/test_cuda_sources.py check what can be checked on the CPU.
"""
import pytest
import torch

import dsch_ext

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_only
def test_center_backward_rejects_grad_on_another_device(generator):
    # (On the CPU no mixed call reaches the kernel: the dispatcher sends a meta tensor to the
    # fake kernel and a CUDA tensor to the CUDA kernel, which is what this tests.)
    x = torch.randn(6, 4, generator=generator).cuda()
    c = torch.randn(3, 4, generator=generator).cuda()
    d = torch.ops.dsch_ext.center_distances(x, c, "sqeuclidean")
    other = "cpu"
    with pytest.raises(RuntimeError, match=r"grad and distances must be on x's device"):
        torch.ops.dsch_ext._center_distances_backward(torch.ones(6, 3, device=other), x, c, d, "sqeuclidean")
    with pytest.raises(RuntimeError, match=r"grad and distances must be on x's device"):
        torch.ops.dsch_ext._center_distances_backward(torch.ones_like(d), x, c, d.to(other), "sqeuclidean")


def every_cuda_op(generator):
    """(name, thunk) for each CUDA op on small inputs, backward included."""
    dev = "cuda"
    codes = torch.randn(300, 64, generator=generator).to(dev)
    packed = dsch_ext.pack_bits(codes)
    x = torch.randn(200, 16, generator=generator).to(dev)
    c = torch.randn(7, 16, generator=generator).to(dev)
    prec = torch.linalg.cholesky(torch.eye(16).expand(7, 16, 16).contiguous()).to(dev)
    logw = torch.full((7,), -float(torch.log(torch.tensor(7.0))), device=dev)
    rows = torch.randn(40, 16, generator=generator).to(dev)
    offsets = torch.tensor([0, 10, 10, 40], device=dev)
    xg = x.clone().requires_grad_(True)

    def backward():
        dsch_ext.center_distances(xg, c, "cosine").sum().backward()

    return [
        ("pack_bits", lambda: dsch_ext.pack_bits(codes)),
        ("unpack_bits", lambda: dsch_ext.unpack_bits(packed, 64)),
        ("hamming_distance", lambda: dsch_ext.hamming_distance(packed[:5], packed)),
        ("hamming_topk", lambda: dsch_ext.hamming_topk(packed[:5], packed, 17)),
        ("center_distances", lambda: dsch_ext.center_distances(x, c, "sqeuclidean")),
        ("_center_distances_backward", backward),
        ("nearest_center", lambda: dsch_ext.nearest_center(x, c)),
        ("gmm_log_resp", lambda: dsch_ext.gmm_log_resp(x, c, prec, logw, "full")),
        ("gmm_log_resp diag", lambda: dsch_ext.gmm_log_resp(x, c, prec[:, 0] + 1, logw, "diag")),
        ("segment_gram", lambda: dsch_ext.segment_gram(rows, offsets)),
    ]


@cuda_only
def test_no_op_synchronises_the_host(generator):
    ops = every_cuda_op(generator)
    for _, op in ops:
        op()  # warm up: first calls may initialise cuBLAS
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for name, op in ops:
            try:
                op()
            except RuntimeError as exc:
                pytest.fail(f"{name} synchronises the host: {exc}")
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda_only
def test_ops_capture_into_a_cuda_graph(generator):
    for name, op in every_cuda_op(generator):
        if name == "_center_distances_backward":
            continue  # autograd's accumulation into .grad is not graph-safe by itself
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            eager = op()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = op()
        graph.replay()
        torch.cuda.synchronize()
        for a, b in zip(eager if isinstance(eager, tuple) else (eager,),
                        captured if isinstance(captured, tuple) else (captured,)):
            assert torch.equal(a, b), name


@cuda_only
def test_hamming_range_reads_its_output_size_once(generator):
    # The one op whose output size depends on the data: it may synchronise (once, for the
    # count), so it is outside the two tests above; here its small-shape run (which
    # compute-sanitizer checks) must equal the CPU op, both conventions.
    codes = torch.randn(300, 64, generator=generator)
    packed = dsch_ext.pack_bits(codes)
    for radius, exclusive in ((0, False), (26, False), (26, True), (64, False)):
        want = dsch_ext.hamming_range(packed[:7], packed, radius, exclusive)
        got = dsch_ext.hamming_range(packed[:7].cuda(), packed.cuda(), radius, exclusive)
        assert all(torch.equal(a, b.cpu()) for a, b in zip(want, got))


@cuda_only
def test_results_ignore_the_tf32_switch(generator):
    x = torch.randn(4000, 64, generator=generator).cuda() * 10
    c = torch.randn(300, 64, generator=generator).cuda() * 10
    ref = dsch_ext.center_distances(x.double(), c.double(), "sqeuclidean")
    old = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        got = dsch_ext.center_distances(x, c, "sqeuclidean")
        idx, _ = dsch_ext.nearest_center(x, c)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old[0]
        torch.set_float32_matmul_precision(old[1])
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-2)  # TF32 is off by ~1e-3 relative
    assert torch.equal(idx, dsch_ext.nearest_center(x.double(), c.double())[0])


@cuda_only
@pytest.mark.large
def test_hamming_topk_counts_past_2_31_codes():
    n = 2**31 + 100
    try:
        db = torch.zeros(n, 1, dtype=torch.uint8, device="cuda")  # 2.1 GB, every code at distance 0
    except torch.cuda.OutOfMemoryError:
        pytest.skip("needs 2.2 GB of GPU memory")
    db[-3:] = 255
    dist, idx = dsch_ext.hamming_topk(torch.full((1, 1), 255, dtype=torch.uint8, device="cuda"), db, 5)
    assert dist.tolist() == [[0, 0, 0, 8, 8]]
    assert idx.tolist() == [[n - 3, n - 2, n - 1, 0, 1]]
