"""The kernels as Python functions, plus their fake (meta) kernels.

Each function validates what only Python can (converting numpy input), calls
``torch.ops.dsch_ext.<op>.default`` and returns its result. The kernels check their inputs
themselves and raise ``RuntimeError`` naming the argument and its shape. The fake kernels
give ``torch.compile(fullgraph=True)`` output shapes and dtypes without running anything.
Nothing here holds algorithm logic.
"""
from typing import Tuple

import numpy as np
import torch

from . import _library  # noqa: F401  (registers torch.ops.dsch_ext)
from ._validation import ArrayLike
from ._validation import as_tensor as _as_tensor

_INT64 = (-(2**63), 2**63 - 1)


def _int_arg(value, name: str, valid: str) -> int:
    """An integer argument as is; a float, bool or an int beyond int64 is a ValueError naming
    it and what is valid (``int(2.7)`` would silently search for 2 neighbours)."""
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int in {valid}, got {value!r} ({type(value).__name__})")
    if not _INT64[0] <= int(value) <= _INT64[1]:
        raise ValueError(f"{name} must be an int in {valid}, got {value}")
    return int(value)


def pack_bits(codes: ArrayLike, nonnegative: bool = False) -> torch.Tensor:
    """Pack binary codes into bytes, faiss's layout.

    Args:
        codes: ``[N, B]`` float, integer or bool tensor; a value is the bit 1 when it is
            ``> 0`` (``True`` for bool), so ``sign`` codes and ``{0, 1}`` codes both work.
            NaN is an error.
        nonnegative: the bit is 1 when the value is ``>= 0`` instead, faiss's binarisers'
            rule (``IndexLSH``, ``fvecs2bitvecs``): 0.0 (and -0.0) becomes 1, not 0. Bool
            codes are bits already and are packed as they are.

    Returns:
        ``uint8 [N, ceil(B / 8)]``: bit ``i`` of byte ``j`` is dimension ``8 j + i``; the
        unused high bits of the last byte are 0. ``faiss.IndexBinaryFlat`` reads it as is.
    """
    t = _as_tensor(codes, "codes")
    if not isinstance(nonnegative, (bool, np.bool_)):
        raise ValueError(f"nonnegative must be a bool, got {nonnegative!r}")
    if not nonnegative or t.dtype == torch.bool:
        return torch.ops.dsch_ext.pack_bits.default(t)
    if not t.is_floating_point():
        return torch.ops.dsch_ext.pack_bits.default(t >= 0)
    # x >= 0 is "not -x > 0": the kernel's rule on -x, its bits inverted (NaN stays an error).
    packed = torch.ops.dsch_ext.pack_bits.default(-t).bitwise_not_()
    tail = t.shape[1] % 8
    if tail and packed.numel():
        packed[:, -1] &= (1 << tail) - 1
    return packed


def unpack_bits(packed: ArrayLike, nbits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``uint8 [N, ceil(nbits / 8)]`` -> ``float32 [N, nbits]``
    of ``+1`` / ``-1``."""
    packed = _as_tensor(packed, "packed")
    width = packed.shape[1] if packed.dim() == 2 else 0
    nbits = _int_arg(nbits, "nbits", f"[{max(1, (width - 1) * 8 + 1)}, {width * 8}]")
    return torch.ops.dsch_ext.unpack_bits.default(packed, nbits)


def hamming_distance(queries: ArrayLike, database: ArrayLike) -> torch.Tensor:
    """All Hamming distances between packed codes.

    Args:
        queries: ``uint8 [nq, W]`` packed codes.
        database: ``uint8 [ndb, W]`` packed codes, same ``W`` and device.

    Returns:
        ``int32 [nq, ndb]``. Memory grows as ``nq * ndb``: use :func:`hamming_topk` to rank.
    """
    return torch.ops.dsch_ext.hamming_distance.default(
        _as_tensor(queries, "queries"), _as_tensor(database, "database")
    )


def hamming_topk(queries: ArrayLike, database: ArrayLike, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact ``k`` nearest database codes of each query by Hamming distance.

    Args:
        queries: ``uint8 [nq, W]`` packed codes (any ``W``; 16-1024-bit codes have fast paths).
        database: ``uint8 [ndb, W]`` packed codes on the same device.
        k: ``1 <= k <= ndb``; large ``k`` (mAP@5000) costs about the same as small ``k``.

    Returns:
        ``(distances int32 [nq, k], indices int64 [nq, k])`` sorted by distance; equal
        distances are ordered by lower database index, identically on every backend.
    """
    database = _as_tensor(database, "database")
    k = _int_arg(k, "k", f"[1, ndb] = [1, {database.shape[0] if database.dim() else 0}]")
    return torch.ops.dsch_ext.hamming_topk.default(_as_tensor(queries, "queries"), database, k)


def hamming_range(queries: ArrayLike, database: ArrayLike, radius: int,
                  exclusive: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every database code within a Hamming radius of each query (range search).

    Args:
        queries: ``uint8 [nq, W]`` packed codes.
        database: ``uint8 [ndb, W]`` packed codes on the same device (may be empty).
        radius: ``>= 0``. A code is a hit when its distance is ``<= radius``; with
            ``exclusive=True`` when it is ``< radius``, faiss's ``range_search`` convention
            (so ``exclusive=True, radius=r + 1`` is this op's default at ``r``).
        exclusive: the test above.

    Returns:
        ``(lims int64 [nq + 1], distances int32 [total], indices int64 [total])``: the hits of
        query ``i`` are ``[lims[i], lims[i + 1])``, in database index order on every backend.
        The output size depends on the data, so on CUDA the op waits for the count (one host
        synchronisation) and cannot be captured in a CUDA graph.
    """
    radius = _int_arg(radius, "radius", "[0, 2**63 - 1]")
    if not isinstance(exclusive, (bool, np.bool_)):
        raise ValueError(f"exclusive must be a bool, got {exclusive!r} ({type(exclusive).__name__})")
    return torch.ops.dsch_ext.hamming_range.default(
        _as_tensor(queries, "queries"), _as_tensor(database, "database"), radius, bool(exclusive))


CENTER_METRICS = ("sqeuclidean", "cosine", "dot")


def center_distances(x: ArrayLike, centers: ArrayLike, metric: str = "sqeuclidean") -> torch.Tensor:
    """Distances between points and centres, differentiable in both.

    Args:
        x: ``[N, D]`` float32/float64 points.
        centers: ``[K, D]`` centres, same dtype and device.
        metric: ``'sqeuclidean'`` (``||x - c||^2``), ``'cosine'`` (``1 - cos(x, c)``, norms
            clamped at 1e-8) or ``'dot'`` (``-<x, c>``). Every metric is a distance: smaller is
            closer, so ``1 - center_distances(h, mu, 'cosine')`` is the cosine similarity.

    Returns:
        ``[N, K]`` in x's dtype. One GEMM plus a fused epilogue; the backward is one pass over
        the ``[N, K]`` gradient plus two GEMMs. NaN/Inf input raises ``RuntimeError``.
    """
    if metric not in CENTER_METRICS:
        raise ValueError(f"metric must be one of {CENTER_METRICS}, got {metric!r}")
    return torch.ops.dsch_ext.center_distances.default(_as_tensor(x, "x"), _as_tensor(centers, "centers"), metric)


def nearest_center(x: ArrayLike, centers: ArrayLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every point (k-means' assignment step), never materialising N x K.

    Returns:
        ``(index int64 [N], squared Euclidean distance [N])``; equal distances go to the lower
        centre index. Extra memory is O(N + K) plus a fixed-size block buffer, so N = 10^7
        works. Not differentiable: inputs that require grad are used detached.
    """
    return torch.ops.dsch_ext.nearest_center.default(_as_tensor(x, "x").detach(),
                                                     _as_tensor(centers, "centers").detach())


GMM_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def gmm_log_resp(x: ArrayLike, means: ArrayLike, precisions_chol: ArrayLike, log_weights: ArrayLike,
                 covariance_type: str = "full", resp_floor: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The GMM E-step: log responsibilities and per-point log-likelihood.

    Args:
        x: ``[N, D]`` float32/float64 points.
        means: ``[K, D]``.
        precisions_chol: Cholesky factors ``L`` of the precisions (``precision = L L^T``,
            scikit-learn's ``precisions_cholesky_``): ``[K, D, D]`` full, ``[D, D]`` tied,
            ``[K, D]`` diag, ``[K]`` spherical.
        log_weights: ``[K]`` log mixture weights.
        covariance_type: ``'full'``, ``'tied'``, ``'diag'`` or ``'spherical'``.
        resp_floor: 0 (default) returns every entry. ``resp_floor > 0`` returns ``-inf``
            (responsibility 0) for every component whose weighted log-probability is more
            than ``-log(resp_floor)`` below the point's best one (its responsibility is below
            ``resp_floor``), and leaves those out of the log-sum-exp, so ``log_prob_norm``
            is at most ``K * resp_floor`` (relative) below the full one. On the CPU, float64
            full covariances then skip most of the work: an upper bound from 8 columns of
            each precision factor rules components out, and only those it cannot rule out
            are computed (exactly). GaussianMixture's sparse M-step uses this.

    Returns:
        ``(log_resp [N, K], log_prob_norm [N])``: ``log p(k | x_i)`` and ``log p(x_i)``,
        computed with a stable log-sum-exp (no NaN or -inf for points far from every component).
        Not differentiable: inputs that require grad are used detached. On the CPU, NaN or Inf
        in x, means or precisions_chol (or NaN / +Inf in log_weights) raises.

    On the CPU, full covariances with K >= 512 (8 <= D <= 128 in float64, <= 64 in float32,
    where it pays) are computed as one GEMM of the expanded quadratic form, with every entry
    that can carry responsibility recomputed in the stable form (its rounding error bound
    decides); elsewhere the stable form alone. ``DSCH_EXT_GMM_ROUTE=stable`` or ``=expanded``
    forces one route wherever it applies (tests, benchmarks).
    """
    if covariance_type not in GMM_COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {GMM_COVARIANCE_TYPES}, got {covariance_type!r}")
    return torch.ops.dsch_ext.gmm_log_resp.default(
        _as_tensor(x, "x").detach(), _as_tensor(means, "means").detach(),
        _as_tensor(precisions_chol, "precisions_chol").detach(), _as_tensor(log_weights, "log_weights").detach(),
        covariance_type, float(resp_floor),
    )


def segment_gram(rows: ArrayLike, offsets: ArrayLike) -> torch.Tensor:
    """Per-segment Gram matrices: ``out[c] = sum_r rows[r] rows[r]^T`` over the rows of segment
    ``c``, ``[offsets[c], offsets[c + 1])`` (CSR offsets, int64 ``[K + 1]``, nondecreasing,
    from 0 to M). ``rows`` is ``[M, D]`` float32/float64; the result ``[K, D, D]`` (empty
    segments give zeros). GaussianMixture's sparse M-step uses it for the second moments of
    the kept (point, component) pairs sorted by component, each point scaled by
    ``sqrt(responsibility)``: no ``[M, D(D+1)/2]`` matrix of products is formed.
    Differentiable in ``rows`` (the backward is torch ops, so second derivatives work too)."""
    return torch.ops.dsch_ext.segment_gram.default(_as_tensor(rows, "rows"), _as_tensor(offsets, "offsets"))


# Autograd for center_distances: the backward is its own op (CPU and CUDA kernels). A backward
# that must itself be differentiable (create_graph=True: second derivatives) is computed from
# the same distances written in differentiable torch ops instead.


def _center_distances_setup_context(ctx, inputs, output):
    x, centers, metric = inputs
    ctx.metric = metric
    ctx.save_for_backward(x, centers, output)


def _torch_center_distances(x: torch.Tensor, centers: torch.Tensor, metric: str) -> torch.Tensor:
    """center_distances in differentiable torch ops (same formulas, same 1e-8 norm clamp)."""
    if metric == "sqeuclidean":
        return (x * x).sum(1, keepdim=True) + (centers * centers).sum(1) - 2 * x @ centers.t()
    if metric == "cosine":
        xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)
        cn = centers / centers.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return 1 - xn @ cn.t()
    return -(x @ centers.t())


def _center_distances_backward(ctx, grad):
    x, centers, output = ctx.saved_tensors
    need_x, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if torch.is_grad_enabled():  # create_graph=True: the gradient must be differentiable
        inputs = [t for t, need in ((x, need_x), (centers, need_c)) if need]
        with torch.enable_grad():
            grads = iter(torch.autograd.grad(_torch_center_distances(x, centers, ctx.metric), inputs, grad,
                                             create_graph=True))
        return (next(grads) if need_x else None), (next(grads) if need_c else None), None
    grad_x, grad_c = torch.ops.dsch_ext._center_distances_backward.default(grad, x, centers, output, ctx.metric)
    return (grad_x if need_x else None), (grad_c if need_c else None), None


torch.library.register_autograd(
    "dsch_ext::center_distances", _center_distances_backward, setup_context=_center_distances_setup_context
)


# Autograd for segment_gram: out[c] = sum of r r^T over segment c, so the gradient of row r of
# segment c is (G_c + G_c^T) r. Computed in chunks of rows so the gathered [rows, D, D] blocks
# stay near 64 MB.


def _segment_gram_setup_context(ctx, inputs, output):
    rows, offsets = inputs
    ctx.save_for_backward(rows, offsets)


def _segment_gram_backward(ctx, grad):
    rows, offsets = ctx.saved_tensors
    m, d = rows.shape
    sym = grad + grad.transpose(1, 2)
    segment = torch.repeat_interleave(torch.arange(offsets.shape[0] - 1, device=offsets.device),
                                      (offsets[1:] - offsets[:-1]).clamp_min(0), output_size=m)
    chunk = max(1, (1 << 24) // max(1, d * d))
    parts = [torch.bmm(sym[segment[s : s + chunk]], rows[s : s + chunk, :, None]).squeeze(-1) for s in range(0, m, chunk)]
    return (torch.cat(parts) if parts else torch.zeros_like(rows)), None


torch.library.register_autograd("dsch_ext::segment_gram", _segment_gram_backward,
                                setup_context=_segment_gram_setup_context)


# Fake kernels: shapes and dtypes only, for torch.compile and meta tensors.


@torch.library.register_fake("dsch_ext::center_distances")
def _center_distances_fake(x, centers, metric):
    torch._check(x.shape[1] == centers.shape[1], lambda: "x and centers have different dimensions")
    return x.new_empty((x.shape[0], centers.shape[0]))


@torch.library.register_fake("dsch_ext::_center_distances_backward")
def _center_distances_backward_fake(grad, x, centers, distances, metric):
    return torch.empty_like(x), torch.empty_like(centers)


@torch.library.register_fake("dsch_ext::gmm_log_resp")
def _gmm_log_resp_fake(x, means, precisions_chol, log_weights, covariance_type, resp_floor=0.0):
    torch._check(x.shape[1] == means.shape[1], lambda: "x and means have different dimensions")
    return x.new_empty((x.shape[0], means.shape[0])), x.new_empty((x.shape[0],))


@torch.library.register_fake("dsch_ext::segment_gram")
def _segment_gram_fake(rows, offsets):
    return rows.new_empty((offsets.shape[0] - 1, rows.shape[1], rows.shape[1]))


@torch.library.register_fake("dsch_ext::nearest_center")
def _nearest_center_fake(x, centers):
    torch._check(x.shape[1] == centers.shape[1], lambda: "x and centers have different dimensions")
    return x.new_empty((x.shape[0],), dtype=torch.int64), x.new_empty((x.shape[0],))


@torch.library.register_fake("dsch_ext::_kmeans_bounded_assign")
def _kmeans_bounded_assign_fake(x, x_sqnorm, centers, order, group_offsets, drift, total_drift, labels, upper,
                                lower, exact):
    return x.new_empty((), dtype=torch.int64)


@torch.library.register_fake("dsch_ext::pack_bits")
def _pack_bits_fake(codes):
    torch._check(codes.dim() == 2, lambda: f"codes must be 2-D, got shape {tuple(codes.shape)}")
    return codes.new_empty((codes.shape[0], (codes.shape[1] + 7) // 8), dtype=torch.uint8)


@torch.library.register_fake("dsch_ext::unpack_bits")
def _unpack_bits_fake(packed, nbits):
    torch._check(packed.dim() == 2, lambda: f"packed must be 2-D, got shape {tuple(packed.shape)}")
    return packed.new_empty((packed.shape[0], nbits), dtype=torch.float32)


@torch.library.register_fake("dsch_ext::hamming_distance")
def _hamming_distance_fake(queries, database):
    torch._check(queries.shape[1] == database.shape[1], lambda: "code widths differ")
    return queries.new_empty((queries.shape[0], database.shape[0]), dtype=torch.int32)


@torch.library.register_fake("dsch_ext::hamming_range")
def _hamming_range_fake(queries, database, radius, exclusive=False):
    torch._check(queries.shape[1] == database.shape[1], lambda: "code widths differ")
    torch._check(radius >= 0, lambda: f"radius must be >= 0, got {radius}")
    total = torch.library.get_ctx().new_dynamic_size()
    return (
        queries.new_empty((queries.shape[0] + 1,), dtype=torch.int64),
        queries.new_empty((total,), dtype=torch.int32),
        queries.new_empty((total,), dtype=torch.int64),
    )


@torch.library.register_fake("dsch_ext::mih_build")
def _mih_build_fake(codes, widths):
    torch._check(len(widths) >= 1, lambda: "widths must list at least one substring")
    wide = any(w > 24 for w in widths)
    return (
        codes.new_empty((sum((1 << min(w, 24)) + 1 for w in widths),), dtype=torch.int32),
        codes.new_empty((len(widths), codes.shape[0]), dtype=torch.int32),
        codes.new_empty((len(widths) if wide else 0, codes.shape[0]), dtype=torch.uint8),
    )


@torch.library.register_fake("dsch_ext::mih_topk")
def _mih_topk_fake(queries, codes, directory, positions, suffixes, widths, k, max_work):
    torch._check(queries.shape[1] == codes.shape[1], lambda: "code widths differ")
    torch._check(1 <= k, lambda: f"k must be >= 1, got {k}")
    torch._check(k <= codes.shape[0], lambda: f"k must be <= ndb, got {k}")
    nq = queries.shape[0]
    return (
        queries.new_empty((nq, k), dtype=torch.int32),
        queries.new_empty((nq, k), dtype=torch.int64),
        queries.new_empty((nq, 3), dtype=torch.int64),
    )


@torch.library.register_fake("dsch_ext::mih_range")
def _mih_range_fake(queries, codes, directory, positions, suffixes, widths, radius, exclusive, max_work):
    torch._check(queries.shape[1] == codes.shape[1], lambda: "code widths differ")
    torch._check(radius >= 0, lambda: f"radius must be >= 0, got {radius}")
    total = torch.library.get_ctx().new_dynamic_size()
    nq = queries.shape[0]
    return (
        queries.new_empty((nq + 1,), dtype=torch.int64),
        queries.new_empty((total,), dtype=torch.int32),
        queries.new_empty((total,), dtype=torch.int64),
        queries.new_empty((nq, 3), dtype=torch.int64),
    )


@torch.library.register_fake("dsch_ext::hamming_topk")
def _hamming_topk_fake(queries, database, k):
    torch._check(queries.shape[1] == database.shape[1], lambda: "code widths differ")
    torch._check(1 <= k, lambda: f"k must be >= 1, got {k}")
    torch._check(k <= database.shape[0], lambda: f"k must be <= ndb, got {k}")
    return (
        queries.new_empty((queries.shape[0], k), dtype=torch.int32),
        queries.new_empty((queries.shape[0], k), dtype=torch.int64),
    )
