"""DSCH's settings (:class:`DSCHConfig`) and what a training run records (:class:`History`).

The settings have one home: the dataclass fields hold the reference values (fine-tuning an
ImageNet network, docs/method.md), :data:`FROM_SCRATCH` the values changed for a network
trained from random weights (why each: docs/method.md, "Choices"); the command line renders
its help from these two.
"""
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .augment import AugmentConfig

# Settings that differ when the network starts from random weights (the small CNN, the MLP).
FROM_SCRATCH = {"lr": 1e-3, "adam_eps": 1e-8, "epochs_per_round": 5, "tau": 0.3, "component_weight": 1.0}

# Keys that model files, checkpoints and run records may hold under another name, and keys
# that do not change what a run learns (read back and dropped).
RENAMED = {"lam": "component_weight"}
DROPPED = ("mstep_threads",)


@dataclass
class DSCHConfig:
    nbits: int = 64
    m1: int = 1000
    m2: int = 100
    covariance_type: str = "full"
    gmm_max_iter: int = 100
    normalize_p1: bool = True
    resp_threshold: float = 1e-8
    component_weight: float = 0.1  # lambda: L = L_ic + lambda (L_ccf + L_ccc)
    tau: float = 1.0
    batch_size: int = 15
    lr: float = 5e-4
    adam_eps: float = 1.0
    lr_decay: float = 0.99
    lr_decay_every: int = 200
    rounds: int = 10
    epochs_per_round: int = 1
    cooccurrence: bool = True
    fine: bool = True
    coarse: bool = True
    baseline: bool = False  # lambda = 0 and S = I
    val_fraction: float = 0.1
    val_map_k: int = 100
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # the two views (AugmentConfig.preset)

    def __post_init__(self):
        self._check()
        if isinstance(self.augment, dict):  # a configuration read back from a checkpoint or record
            augment = dict(self.augment)
            for key in ("crop_scale", "crop_ratio", "erase_scale"):  # JSON gives lists
                if isinstance(augment.get(key), list):
                    augment[key] = tuple(augment[key])
            self.augment = AugmentConfig(**augment)

    def _check(self) -> None:
        """A ValueError naming the first setting no training could run with."""
        at_least_one = ("nbits", "m1", "m2", "rounds", "epochs_per_round", "lr_decay_every", "val_map_k")
        for name in at_least_one:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        checks = [("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 2, "an int >= 2"),
                  ("gmm_max_iter", isinstance(self.gmm_max_iter, int) and self.gmm_max_iter >= 0, "an int >= 0"),
                  ("covariance_type", self.covariance_type in ("full", "tied", "diag", "spherical"),
                   "'full', 'tied', 'diag' or 'spherical'"),
                  ("resp_threshold", 0 <= self.resp_threshold < 1, "in [0, 1)"),
                  ("component_weight", self.component_weight >= 0, ">= 0"), ("tau", self.tau > 0, "> 0"),
                  ("lr", self.lr > 0, "> 0"), ("adam_eps", self.adam_eps > 0, "> 0"),
                  ("lr_decay", 0 < self.lr_decay <= 1, "in (0, 1]"), ("val_fraction", 0 <= self.val_fraction < 1,
                                                                     "in [0, 1)")]
        for name, ok, valid in checks:
            if not ok:
                raise ValueError(f"{name} must be {valid}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: Dict) -> "DSCHConfig":
        """A configuration read back from a model file, checkpoint or record, older names
        included (``lam``); settings that only changed speed (``mstep_threads``) are dropped."""
        fields = {RENAMED.get(k, k): v for k, v in values.items() if k not in DROPPED}
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown DSCH settings {unknown} (written by a newer dsch_ext?)")
        return cls(**fields)

    @classmethod
    def from_scratch(cls, **overrides) -> "DSCHConfig":
        """Settings for a network trained from random weights (the small CNN, the MLP head), as
        the command line uses them: the reference with :data:`FROM_SCRATCH` (docs/method.md
        says why each value)."""
        return cls(**{**FROM_SCRATCH, **overrides})

    @classmethod
    def fine_tuning(cls, **overrides) -> "DSCHConfig":
        """The reference settings, for fine-tuning a pretrained backbone (an ImageNet VGG in
        the paper): Adam at lr 5e-4 with epsilon 1.0, lambda 0.1, tau 1.0, batches of 15, one
        epoch a round, 10 rounds. They are this class's defaults; the command line uses them
        with ``--backbone``."""
        return cls(**overrides)

    def effective(self) -> "DSCHConfig":
        """What the loss uses: the contrastive baseline is lambda = 0 and S = I."""
        if not self.baseline:
            return self
        return dataclasses.replace(self, component_weight=0.0, cooccurrence=False)

    def as_record(self) -> Dict:
        """The settings as JSON values (tuples become lists), as records store them."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class RoundRecord:
    round: int
    loss: float
    parts: Dict[str, float]
    estep_seconds: float
    mstep_seconds: float
    m1: int
    m2: int
    val_map: Optional[float] = None
    gmm_iterations: Optional[int] = None
    gmm_lower_bound: Optional[float] = None
    mstep_threads: Optional[int] = None  # torch's thread count while the M-step ran
    seconds: float = 0.0  # wall clock of the whole round: E-step, M-step, validation


@dataclass
class History:
    rounds: List[RoundRecord] = field(default_factory=list)
    best_round: Optional[int] = None

    def to_json(self) -> str:
        return json.dumps({"rounds": [dataclasses.asdict(r) for r in self.rounds], "best_round": self.best_round})
