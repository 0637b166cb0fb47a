"""Clustering: :class:`KMeans` (scikit-learn's API on any torch device) and its k-means++
seeding. ``_kmeans`` is the estimator, ``_lloyd`` the iterations, ``_plusplus`` the seeding,
``_bounded`` the Elkan / Yinyang assignment passes."""
from ._kmeans import KMeans
from ._plusplus import kmeans_plusplus

__all__ = ["KMeans", "kmeans_plusplus"]
