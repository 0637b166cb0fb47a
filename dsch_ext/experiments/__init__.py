"""The reproduction bench: what ``dsch results`` runs to write the tables behind RESULTS.md.

- :mod:`.results`: every run of the report (DSCH, its contrastive baseline, the ablation, LSH /
  PCAH / ITQ, over code lengths and seeds), reused when finished, and the generated tables.
- :mod:`.estep`: DSCH's E-step timed against scikit-learn's at equal EM iterations.

This is the project's bench, not its library: nothing in the library imports it. Training,
evaluation and data loading are in :mod:`dsch_ext.dsch` and :mod:`dsch_ext.datasets`.
"""
