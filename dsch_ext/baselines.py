"""Shallow hashing baselines in torch, on any device: LSH, PCAH and ITQ.

Each has ``fit(X)`` (X ``[N, D]`` features) and ``encode(X)`` → ±1 float codes ``[N, nbits]``
(``dsch_ext.pack_bits`` packs them), so they share the evaluation code of deep methods.

- ``LSH``: signs of random Gaussian projections of the centred data (Charikar, 2002).
- ``PCAH``: signs of the top-``nbits`` principal components (Wang et al., 2010).
- ``ITQ``: PCA, then an orthogonal rotation learnt by alternating ``B = sign(V R)`` and the
  Procrustes solution ``R = U W^T`` of ``V^T B = U S W^T`` (Gong & Lazebnik, 2011), 50
  iterations by default, random orthogonal initial rotation.
"""

import torch

from ._sklearn import BaseEstimator, TransformerMixin
from ._validation import SeedLike, as_float_tensor, check_fitted, make_generator, positive_int


class _LinearHash(TransformerMixin, BaseEstimator):
    """sign((X - mean) @ projection). ``transform`` is ``encode`` (scikit-learn's name)."""

    def __init__(self, nbits: int = 64, random_state: SeedLike = 0):
        self.nbits = nbits
        self.random_state = random_state

    def _prepare(self, X):
        positive_int(self.nbits, "nbits")
        X = as_float_tensor(X)
        self.mean_ = X.mean(0)
        return X, X - self.mean_

    def encode(self, X) -> torch.Tensor:
        check_fitted(self, "projection_")
        X = as_float_tensor(X, device=self.mean_.device).to(self.mean_.dtype)
        if X.shape[1] != self.projection_.shape[0]:
            raise ValueError(f"X has {X.shape[1]} features (shape {tuple(X.shape)}), the model expects "
                             f"{self.projection_.shape[0]}")
        projected = (X - self.mean_) @ self.projection_
        return torch.where(projected > 0, 1.0, -1.0).to(X.dtype)

    def fit_encode(self, X) -> torch.Tensor:
        return self.fit(X).encode(X)

    def transform(self, X) -> torch.Tensor:
        return self.encode(X)


def _pca(Xc: torch.Tensor, nbits: int) -> torch.Tensor:
    if nbits > Xc.shape[1]:
        raise ValueError(f"nbits={nbits} exceeds the number of features {Xc.shape[1]} (PCA-based hashing)")
    cov = Xc.t() @ Xc / Xc.shape[0]
    evals, evecs = torch.linalg.eigh(cov.double())
    order = torch.argsort(evals, descending=True)[:nbits]
    return evecs[:, order].to(Xc.dtype)


class LSH(_LinearHash):
    """Random-projection LSH."""

    def fit(self, X, y=None) -> "LSH":
        X, _ = self._prepare(X)
        g = make_generator(self.random_state)
        self.projection_ = torch.randn((X.shape[1], self.nbits), generator=g, dtype=torch.float64).to(X.device, X.dtype)
        return self


class PCAH(_LinearHash):
    """PCA hashing."""

    def fit(self, X, y=None) -> "PCAH":
        _, Xc = self._prepare(X)
        self.projection_ = _pca(Xc, self.nbits)
        return self


class ITQ(_LinearHash):
    """Iterative quantisation."""

    def __init__(self, nbits: int = 64, n_iter: int = 50, random_state: SeedLike = 0):
        super().__init__(nbits, random_state)
        self.n_iter = n_iter

    def fit(self, X, y=None) -> "ITQ":
        _, Xc = self._prepare(X)
        pca = _pca(Xc, self.nbits)
        V = (Xc @ pca).double()
        g = make_generator(self.random_state)
        R, _ = torch.linalg.qr(torch.randn((self.nbits, self.nbits), generator=g, dtype=torch.float64))
        R = R.to(V.device)
        for _ in range(self.n_iter):
            B = torch.where(V @ R > 0, 1.0, -1.0).double()
            U, _, Wt = torch.linalg.svd(V.t() @ B)
            R = U @ Wt
        self.rotation_ = R.to(Xc.dtype)
        self.projection_ = pca @ self.rotation_
        return self
