"""mmsegmentation's optimiser settings in detectron2's terms: ``paramwise_cfg.custom_keys`` learning-rate multipliers
(for ``get_default_optimizer_params(lr_factor_func=...)``) and mmengine's ``PolyLR`` as a torch ``LRScheduler`` (for
detectron2's ``hooks.LRScheduler``)."""
from __future__ import annotations

from typing import Dict, List, Mapping

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["custom_keys_lr_factor", "PolyLR"]


def custom_keys_lr_factor(name: str, custom_keys: Mapping[str, float]) -> float:
    """The learning-rate multiplier of parameter ``name`` (e.g. ``decode_head.conv_seg.weight``) under mmengine's
    ``paramwise_cfg=dict(custom_keys={key: dict(lr_mult=m)})``: the first key, in mmengine's order (alphabetical,
    then longest first), that is a substring of the name gives its multiplier; no key: 1.

    SN-Netv2's segmentation configs set ``{"head": 10}``: every parameter of the decode and auxiliary heads (and
    of nothing else: the backbone's parameter names hold no "head") learns 10x faster.
    """
    for key in sorted(sorted(custom_keys), key=len, reverse=True):
        if key in name:
            return float(custom_keys[key])
    return 1.0


class PolyLR(LRScheduler):
    """mmengine's ``PolyLR(eta_min, power)`` stepped by iteration over ``max_iter`` iterations (``begin=0``,
    ``end=max_iter``): iteration ``t`` trains every param group ``g`` at

        ``lr_g(t) = (lr_g0 - eta_min) * (1 - t / T) ** power + eta_min``,  ``T = max_iter - 1``

    (mmengine's ``total_iters = end - begin - 1``; ``lr_g0``: the group's rate when built; ``t >= T``: ``eta_min``;
    ``max_iter=1``: ``lr_g0``, as mmengine never updates it).
    ``eta_min`` is an absolute floor, the same for every group, so the groups' rates do not keep their ratio and
    detectron2's ``LRMultiplier`` (one factor for all groups) cannot express it. mmengine updates the rates by a
    chained rule; this closed form is its product, so a resumed run needs only ``last_epoch``.

    The state saved with a checkpoint is ``base_lrs`` and ``last_epoch`` (as ``LRMultiplier``): ``max_iter``,
    ``eta_min`` and ``power`` are the config's on resume.
    """

    def __init__(self, optimizer: Optimizer, max_iter: int, eta_min: float = 0.0, power: float = 1.0,
                 last_iter: int = -1):
        if max_iter < 1:
            raise ValueError(f"PolyLR: max_iter must be >= 1, got {max_iter}")
        if power <= 0:
            raise ValueError(f"PolyLR: power must be > 0, got {power}")
        self.max_iter, self.eta_min, self.power = int(max_iter), float(eta_min), float(power)
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> Dict[str, object]:
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self) -> List[float]:
        total = self.max_iter - 1
        decay = (1.0 - min(self.last_epoch, total) / total) ** self.power if total > 0 else 1.0
        return [(base_lr - self.eta_min) * decay + self.eta_min for base_lr in self.base_lrs]
