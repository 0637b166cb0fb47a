"""The DSCH method (docs/method.md): training rounds of an E-step, which finds the semantic
components of the current codes, and an M-step, which trains the hash network with the
instance- and component-correlation losses.

- :class:`DSCHTrainer` / :class:`DSCHConfig`: the training loop and its settings.
- :func:`fit_components` (:mod:`.components`): the E-step.
- :func:`dsch_loss` (:mod:`.losses`): the M-step's losses.
- :class:`TwoViewAugment` (:mod:`.augment`): two augmented views of a batch, on its device.
- :class:`HashNet`, :func:`small_cnn_hash_net`, :class:`MLPBackbone` (:mod:`.networks`).
"""
from .augment import AugmentConfig, TwoViewAugment
from .components import Components, ResponsibilityTable, fit_components
from .losses import component_correlation_loss, dsch_loss, instance_correlation_loss
from .networks import HashNet, MLPBackbone, SmallCNN, small_cnn_hash_net
from .config import DSCHConfig, History, RoundRecord
from .trainer import DSCHTrainer

__all__ = [
    "AugmentConfig", "Components", "DSCHConfig", "DSCHTrainer", "HashNet", "History", "MLPBackbone",
    "ResponsibilityTable", "RoundRecord", "SmallCNN", "TwoViewAugment", "component_correlation_loss", "dsch_loss",
    "fit_components", "instance_correlation_loss", "small_cnn_hash_net",
]
