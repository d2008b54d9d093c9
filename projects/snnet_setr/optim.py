"""mmsegmentation's optimiser settings in detectron2's terms: ``paramwise_cfg.custom_keys`` learning-rate multipliers
(for ``get_default_optimizer_params(lr_factor_func=...)``) and the poly schedule with a floor (mmengine ``PolyLR``)
as an ``fvcore`` parameter scheduler (for detectron2's ``LRMultiplier``)."""
from __future__ import annotations

from typing import Mapping

from fvcore.common.param_scheduler import ParamScheduler

__all__ = ["custom_keys_lr_factor", "PolyParamScheduler"]


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


class PolyParamScheduler(ParamScheduler):
    """``start_value -> end_value`` by ``(start - end) * (1 - where) ** power + end`` over the run.

    As a learning-rate multiplier with ``start_value=1`` and ``end_value = eta_min / lr`` it is mmengine's
    ``PolyLR(eta_min, power)`` for the base learning rate (``where`` = iteration / total iterations).
    """

    def __init__(self, start_value: float = 1.0, end_value: float = 0.0, power: float = 1.0):
        if power <= 0:
            raise ValueError(f"power must be > 0, got {power}")
        self.start_value, self.end_value, self.power = float(start_value), float(end_value), float(power)

    def __call__(self, where: float) -> float:
        return (self.start_value - self.end_value) * (1.0 - where) ** self.power + self.end_value
