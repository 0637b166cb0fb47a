"""Assignment passes that skip the centres their bounds rule out: Yinyang k-means (Ding et al.,
ICML 2015) and, with one centre per group, Elkan's algorithm (Elkan, ICML 2003). Both give the
labels of the plain pass exactly: the ``_kmeans_bounded_assign`` kernel (CPU) widens every bound
by a rigorous bound on its rounding."""
import torch


def _round_up(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 values in ``dtype``, rounded up (never below the float64 value)."""
    cast = values.to(dtype)
    return torch.where(cast.double() < values, torch.nextafter(cast, cast.new_tensor(float("inf"))), cast)


def _principal_direction(rows: torch.Tensor, steps: int = 20) -> torch.Tensor:
    """Approximate top right singular vector of ``rows`` by power iteration on the Gram matrix
    (deterministic start: the row of largest norm); for splitting, not for accuracy."""
    gram = rows.t() @ rows
    v = rows[int(torch.argmax((rows * rows).sum(1)))]
    for _ in range(steps):
        v = gram @ v
        v = v / v.norm().clamp(min=1e-300)
    return v


class BoundedAssignment:
    """k-means assignment passes that skip the centres their bounds rule out: the
    ``_kmeans_bounded_assign`` kernel plus its state across Lloyd iterations. The centres are
    split once into groups of ``group_size`` neighbours (recursive halving of the initial
    centres; ``group_size=1`` is Elkan's per-centre bounds); each point keeps an upper bound on
    the distance to its centre and a lower bound per group. After the first pass, which
    computes every distance, a pass computes only the distances to groups that could hold a
    nearer centre. Same labels as the plain pass (distances rounded the same way, ties to the
    lower index). CPU; memory N x K / group_size values."""

    EXACT_ABOVE = 0.7  # share of the distances above which the next pass is the exact one

    def __init__(self, X: torch.Tensor, centers: torch.Tensor, group_size: int = 16):
        k = centers.shape[0]
        self.X = X.contiguous()
        self.x_sqnorm = (self.X * self.X).sum(1)
        group = self._group_centers(centers, group_size)
        n_groups = int(group.max()) + 1
        self.order = torch.argsort(group, stable=True)
        self.rank = torch.empty_like(self.order)
        self.rank[self.order] = torch.arange(k)
        counts = torch.bincount(group, minlength=n_groups)
        self.group_offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        self.group_of_sorted = group[self.order]
        self.total_drift = torch.zeros(n_groups, dtype=torch.float64)
        n = X.shape[0]
        self.labels = torch.zeros(n, dtype=torch.int64)
        self.upper = X.new_empty(n)
        self.lower = X.new_empty((n, n_groups))
        self.centers = centers
        self.computed = 0
        self._pass(centers.new_zeros(k), exact=True)

    @staticmethod
    def _group_centers(centers: torch.Tensor, size: int) -> torch.Tensor:
        """Group of every centre: recursive halving along the principal direction into groups
        of ``size`` centres (the last may be smaller), so the kernel's register tiles are full."""
        k = centers.shape[0]
        group = torch.empty(k, dtype=torch.int64)
        points = centers.double()
        stack = [torch.arange(k)]
        next_group = 0
        while stack:
            ids = stack.pop()
            if ids.numel() <= size:
                group[ids] = next_group
                next_group += 1
                continue
            part = points[ids] - points[ids].mean(0)
            direction = _principal_direction(part)
            by_projection = ids[torch.argsort(part @ direction, stable=True)]
            left = (ids.numel() + size - 1) // size // 2 * size
            stack += [by_projection[left:], by_projection[:left]]
        return group

    def _pass(self, drift_sorted: torch.Tensor, exact: bool) -> None:
        dtype = self.X.dtype
        computed = torch.ops.dsch_ext._kmeans_bounded_assign.default(
            self.X, self.x_sqnorm, self.centers[self.order].contiguous(), self.order, self.group_offsets,
            drift_sorted, _round_up(self.total_drift, dtype), self.labels, self.upper, self.lower, exact)
        self.computed += int(computed)
        self.last_work = 0.0 if exact else int(computed) / (self.X.shape[0] * self.centers.shape[0])

    def labels_original(self) -> torch.Tensor:
        """Each point's centre (original centre index)."""
        return self.order[self.labels]

    def move(self, new_centers: torch.Tensor) -> None:
        """The centres moved to ``new_centers``: update the bounds and run the next pass."""
        drift = (new_centers.double() - self.centers.double()).norm(dim=1)[self.order]
        group_max = torch.zeros_like(self.total_drift).scatter_reduce_(
            0, self.group_of_sorted, drift, reduce="amax", include_self=True)
        self.total_drift += group_max
        self.centers = new_centers
        # A bounded pass that computes most distances costs more than the exact pass (one
        # GEMM), which also makes every bound tight again: after one, take the exact pass.
        exact = self.last_work > self.EXACT_ABOVE
        self._pass(_round_up(drift, new_centers.dtype), exact=exact)


def bounded_group_size(X: torch.Tensor, n_clusters: int, algorithm: str):
    """The group size of the bounded passes ``algorithm`` (KMeans' parameter) runs on this data,
    or None for the plain pass (one GEMM an iteration): 'elkan' 1 (memory N x K values),
    'yinyang' 16, 'auto' 16 on the CPU from K = 32 on while the bounds fit in 1 GB."""
    if algorithm == "lloyd" or n_clusters == 1:
        return None
    cpu = X.device.type == "cpu"
    if algorithm in ("yinyang", "elkan"):
        if not cpu:
            raise ValueError(f"algorithm={algorithm!r} runs on the CPU only; X is on {X.device} (use 'auto' or 'lloyd')")
        return 1 if algorithm == "elkan" else 16
    return 16 if cpu and n_clusters >= 32 and X.shape[0] * (n_clusters // 16) <= (1 << 28) else None
