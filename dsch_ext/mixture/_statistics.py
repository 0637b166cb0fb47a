"""The M-step's sufficient statistics of a Gaussian mixture: the mass, first and second moments
each component gets from the responsibilities, dense (``[N, K]``) or sparse
(:class:`SparseResp`), and the parameters they give (scikit-learn's
``_estimate_gaussian_parameters``: the ``10 * eps`` added to each mass, ``reg_covar`` on the
covariance diagonals).

Statistics are sums over points, so data sharded across ranks needs one sum over ranks
between :func:`local_statistics` and :func:`parameters` (``GaussianMixture`` does it).
"""
import math
from typing import NamedTuple

import torch

# scikit-learn's covariance types and how many numbers each parameterises.
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


class SparseResp(NamedTuple):
    """Responsibilities as their nonzero entries: ``weight[i]`` of point ``point[i]`` for
    component ``comp[i]`` (the M-step's input when most of the [N, K] matrix is ~0)."""

    point: torch.Tensor  # int64 [nnz]
    comp: torch.Tensor  # int64 [nnz]
    weight: torch.Tensor  # [nnz], X's dtype
    n_components: int

    @classmethod
    def from_log_resp(cls, log_resp: torch.Tensor, threshold: float) -> "SparseResp":
        """The entries of ``exp(log_resp)`` that are ``>= threshold``."""
        point, comp = torch.nonzero(log_resp >= math.log(threshold), as_tuple=True)
        return cls(point, comp, torch.exp(log_resp[point, comp]), log_resp.shape[1])

    @classmethod
    def one_hot(cls, point: torch.Tensor, comp: torch.Tensor, k: int, dtype: torch.dtype) -> "SparseResp":
        return cls(point, comp, torch.ones(point.shape[0], dtype=dtype, device=point.device), k)

    def to_dense(self, n: int) -> torch.Tensor:
        """The ``[n, K]`` matrix of the kept entries (zeros elsewhere)."""
        out = torch.zeros((n, self.n_components), dtype=self.weight.dtype, device=self.weight.device)
        return out.index_put_((self.point, self.comp), self.weight)  # (point, comp) pairs are unique

    def sum_rows_into(self, values: torch.Tensor) -> torch.Tensor:
        """``[K, ...]``: sum over points of weight * values[point] per component."""
        w = self.weight.reshape((-1,) + (1,) * (values.dim() - 1))
        out = values.new_zeros((self.n_components,) + tuple(values.shape[1:]))
        return out.index_add_(0, self.comp, values[self.point] * w)


class Statistics(NamedTuple):
    """Sums over the points of centred data: ``mass [K]`` (of the responsibilities), ``first
    [K, D]`` (r x), ``second`` (full ``[K, D, D]`` r x x^T; tied ``[D, D]`` x x^T; diag and
    spherical ``[K, D]`` r x^2)."""

    mass: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor


def packed_products(xs: torch.Tensor) -> torch.Tensor:
    """``[n, D(D+1)/2]``: x_i x_j for i <= j, row by row (the upper triangle of x x^T, packed
    row-major like ``torch.triu_indices``); D slice products, far faster than a gather."""
    n, d = xs.shape
    out = xs.new_empty((n, d * (d + 1) // 2))
    offset = 0
    for i in range(d):
        torch.mul(xs[:, i : i + 1], xs[:, i:], out=out[:, offset : offset + d - i])
        offset += d - i
    return out


def packed_products_pay(k: int, d: int) -> bool:
    """Whether the dense second moments are cheaper as one GEMM against the packed products
    than as one Gram matrix per component. The packed products cost D(D+1)/2 numbers per point
    whatever K is, and their GEMM has only K rows: measured on two cores they win from K = 128
    (D <= 256; at K = 1000, D = 64 3x) and from K = 64 at D <= 16, and lose below (at K = 4,
    D = 64 17x slower, at D = 2048 50x with a GEMM of 8 points)."""
    return (k >= 128 and d <= 256) or (k >= 64 and d <= 16)


def full_second_moments(Xc: torch.Tensor, resp) -> torch.Tensor:
    """sum_i r_ik x_i x_i^T for every k: ``[K, D, D]``, exactly symmetric. Dense: one GEMM of
    the responsibilities against the points' packed products (the upper triangles), in row
    chunks, or one Gram matrix of the points scaled by sqrt(r_k) per component
    (:func:`packed_products_pay` chooses). Sparse (:class:`SparseResp`): only the kept
    (point, component) pairs, sorted by component, through the ``segment_gram`` kernel."""
    if isinstance(resp, SparseResp):
        order = torch.argsort(resp.comp, stable=True)
        weighted = Xc[resp.point[order]] * resp.weight[order].sqrt()[:, None]
        offsets = torch.zeros(resp.n_components + 1, dtype=torch.int64, device=Xc.device)
        torch.cumsum(torch.bincount(resp.comp, minlength=resp.n_components), 0, out=offsets[1:])
        return torch.ops.dsch_ext.segment_gram.default(weighted, offsets)
    n, d = Xc.shape
    k = resp.shape[1]
    out = Xc.new_empty((k, d, d))
    if not packed_products_pay(k, d):
        root = resp.sqrt()
        for j in range(k):
            scaled = Xc * root[:, j : j + 1]
            gram = torch.mm(scaled.t(), scaled, out=out[j])
            # A Gram GEMM need not round (i, j) and (j, i) alike: the lower triangle mirrors the upper.
            upper = gram.triu()
            gram.copy_(upper).add_(upper.triu(1).t())
        return out
    rows, cols = torch.triu_indices(d, d, device=Xc.device)
    packed = Xc.new_zeros((k, rows.shape[0]))
    chunk = max(1, (1 << 24) // rows.shape[0])
    for start in range(0, n, chunk):
        packed.addmm_(resp[start : start + chunk].t(), packed_products(Xc[start : start + chunk]))
    out[:, rows, cols] = packed
    out[:, cols, rows] = packed
    return out


def local_statistics(Xc: torch.Tensor, resp, covariance_type: str) -> Statistics:
    """The statistics of this process's (centred, float64) rows under ``resp`` (a dense
    ``[N, K]`` tensor or a :class:`SparseResp`)."""
    second_resp = resp  # segment_gram is deterministic on every device
    if isinstance(resp, SparseResp) and Xc.device.type != "cpu":
        # On a GPU index_add_ adds with atomics (the bits vary run to run): the masses, means and
        # diagonal moments come from the dense matrix of the kept entries and GEMMs instead.
        resp = resp.to_dense(Xc.shape[0])
    sparse = isinstance(resp, SparseResp)
    if sparse:
        mass = Xc.new_zeros(resp.n_components).index_add_(0, resp.comp, resp.weight)
    else:
        mass = resp.sum(0)
    first = resp.sum_rows_into(Xc) if sparse else resp.t() @ Xc
    if covariance_type == "full":
        second = full_second_moments(Xc, second_resp)
    elif covariance_type == "tied":
        second = Xc.t() @ Xc
    else:
        x2 = Xc * Xc
        second = resp.sum_rows_into(x2) if sparse else resp.t() @ x2
    return Statistics(mass, first, second)


def parameters(stats: Statistics, shift: torch.Tensor, reg_covar: float, covariance_type: str):
    """(masses ``[K]``, means ``[K, D]``, covariances) from the float64 statistics of all the
    data, centred on ``shift``. scikit-learn adds ``10 eps`` to every mass (an empty component
    divides by it, not by 0); the eps is float64's, the sums' dtype. Full covariances are
    made in ``stats.second``'s memory (at K = 4, D = 2048 a copy is 134 MB)."""
    eps = torch.finfo(torch.float64).eps
    nk = stats.mass + 10 * eps
    means_c = stats.first / nk[:, None]
    # second / nk - mu mu^T is the centred sum biased by 10 eps |mu|^2 / nk: with the float64
    # eps that bias is far below rounding, and it keeps a one-point component's variance
    # positive (the exact value, 0, would be lost to rounding either way).
    if covariance_type == "full":
        covariances = stats.second.div_(nk[:, None, None])
        covariances.baddbmm_(means_c[:, :, None], means_c[:, None, :], alpha=-1)  # no [K, D, D] temporary
        covariances.diagonal(dim1=1, dim2=2).add_(reg_covar)
    elif covariance_type == "tied":
        covariances = (stats.second - (nk[:, None] * means_c).t() @ means_c) / nk.sum()
        covariances.diagonal().add_(reg_covar)
    else:
        covariances = stats.second / nk[:, None] - means_c**2 + reg_covar
        if covariance_type == "spherical":
            covariances = covariances.mean(1)
    return nk, means_c + shift, covariances
