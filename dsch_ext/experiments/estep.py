"""DSCH's E-step against scikit-learn's at equal EM iterations."""
import time
import warnings
from typing import Dict

import torch

from ..dsch.components import fit_components


def estep_comparison(codes: torch.Tensor, m1: int = 1000, m2: int = 100, iterations: int = 3, seed: int = 0,
                     more_iterations: int = 10, device: str = "cpu") -> Dict:
    """DSCH's E-step (full-covariance GMM with k-means initialisation, then k-means over its
    means) at equal EM iterations with dsch_ext (float64, the sparse M-step the trainer uses)
    and with scikit-learn, on the same codes, at ``iterations`` and again at
    ``more_iterations`` (0: skip). The difference gives each side's time per EM iteration: a
    round runs up to ``max_iter`` iterations (the first round many, later ones few), so a
    round's ratio lies between the ratio at a few iterations (where the k-means
    initialisation weighs most) and the per-iteration ratio. ``device``: where dsch_ext runs
    (scikit-learn runs on the CPU)."""
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    X = codes.double().cpu()
    X_ours = X.to(device)

    def ours(its):
        _synchronize(device)
        t0 = time.perf_counter()
        comp = fit_components(X_ours, m1, m2, "full", its, min_points_per_component=1, random_state=seed, tol=0.0)
        _synchronize(device)
        seconds = time.perf_counter() - t0
        if comp.gmm_iterations != its:
            raise RuntimeError(f"dsch_ext ran {comp.gmm_iterations} EM iterations, not {its}")
        return seconds, comp

    def theirs(its, k1, k2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            gm = SkGaussianMixture(k1, covariance_type="full", max_iter=its, tol=0.0, random_state=seed).fit(X.numpy())
            gm.predict_proba(X.numpy())
            SkKMeans(k2, n_init=1, random_state=seed).fit(gm.means_)
            seconds = time.perf_counter() - t0
        if gm.n_iter_ != its:
            raise RuntimeError(f"scikit-learn ran {gm.n_iter_} EM iterations, not {its}")
        return seconds, gm

    t_ours, comp = ours(iterations)
    t_theirs, gm = theirs(iterations, comp.m1, comp.m2)
    record = {"n": int(X.shape[0]), "nbits": int(X.shape[1]), "m1": comp.m1, "m2": comp.m2, "iterations": iterations,
              "device": str(X_ours.device),
              "dsch_ext_seconds": t_ours, "sklearn_seconds": t_theirs, "speedup": t_theirs / t_ours,
              "dsch_ext_lower_bound": comp.gmm_lower_bound, "sklearn_lower_bound": float(gm.lower_bound_)}
    if more_iterations > iterations:
        extra = more_iterations - iterations
        ours_per = (ours(more_iterations)[0] - t_ours) / extra
        theirs_per = (theirs(more_iterations, comp.m1, comp.m2)[0] - t_theirs) / extra
        record.update(more_iterations=more_iterations, dsch_ext_seconds_per_iteration=ours_per,
                      sklearn_seconds_per_iteration=theirs_per, speedup_per_iteration=theirs_per / ours_per)
    return record


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
