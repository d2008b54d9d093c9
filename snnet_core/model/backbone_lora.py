"""LoRA on the anchors' linear layers: parameter-efficient tuning of the backbone (SN-Netv2 Fig. 12a).

The paper applies "LoRA with a rank of 4 to the backbone" of a DeiT3-B/L SN-Net and trains the rest as usual;
its released code holds loralib's ``Linear`` (``lora.py``) and a ``wrap_model_with_lora`` that no released
config calls. Here the layers are those of every block's attention (``attn.qkv``, ``attn.proj``: timm's ViT and
SAM attention) and MLP (``mlp.fc1``, ``mlp.fc2``: timm's ``Mlp`` and ``GluMlp``), with loralib's constants, as this
engine's LoRA SL (``stitching_layers``): ``y = x W^T + b + (alpha / r) (x A^T) B^T`` with ``W``, ``b`` the
pretrained weights (frozen), ``A`` (``r x D_in``) Kaiming-uniform, ``B`` (``D_out x r``) zero, ``alpha = 1``:
training starts at the pretrained anchor. BEiT's attention applies ``qkv.weight`` itself (with its q/v biases), so
a BEiT anchor is refused.

Everything else in the anchors is frozen (embeddings, norms, LayerScale), except a classifier ``head`` (the
task head of classification). The factors are named ``lora_down`` (``A``) and ``lora_up`` (``B``), as in the
stitching layers: both merge away in a deployed stitch (``merge_backbone_lora``), so a stitch's deployed
FLOPs and parameters are those of the anchors without LoRA (``deployed_numel``, ``base_linears``).
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, GluMlp, Mlp
from timm.models.vision_transformer_sam import Attention as SamAttention

LORA_FACTORS = ("lora_down", "lora_up")  # parameter names of low-rank factors that merge into the weight
# layer -> the owner classes that call it as a module (BEiT's attention applies qkv.weight itself: not one of them)
TARGETS: Dict[str, Tuple[type, ...]] = {"qkv": (Attention, SamAttention), "proj": (Attention, SamAttention),
                                        "fc1": (Mlp, GluMlp), "fc2": (Mlp, GluMlp)}
CLASSIFIER_PREFIX = "head."  # anchor parameters that stay trainable under backbone LoRA


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` ``(..., D_in) -> (..., D_out)`` plus a rank-``r`` update, built over an existing layer.

    ``weight`` and ``bias`` are the given layer's own parameters (same tensors, same state-dict keys, so a
    pretrained checkpoint still loads into the anchor), frozen; ``lora_down`` ``(r, D_in)`` and ``lora_up``
    ``(D_out, r)`` are new and trainable.
    """

    def __init__(self, linear: nn.Linear, rank: int, alpha: float = 1.0):
        nn.Module.__init__(self)
        if not 0 < rank <= min(linear.in_features, linear.out_features):
            raise ValueError(f"backbone LoRA rank must be in [1, {min(linear.in_features, linear.out_features)}] "
                             f"for a {linear.in_features}->{linear.out_features} layer, got {rank}")
        if not alpha > 0:
            raise ValueError(f"backbone LoRA alpha must be positive, got {alpha}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        self.weight = linear.weight
        self.bias = linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = dict(device=linear.weight.device, dtype=linear.weight.dtype)
        self.lora_down = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_up = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_down, a=math.sqrt(5))  # loralib: as nn.Linear's weight; B stays 0

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / r) B A``, ``(D_out, D_in)``."""
        return (self.lora_up @ self.lora_down) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_down), self.lora_up) * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing this layer (``W + (alpha / r) B A``, ``b``), for deployment."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        linear.weight.copy_(self.weight + self.delta_weight())
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


def _targets(anchor: nn.Module) -> List[Tuple[str, nn.Module, str]]:
    """``(full name, owner module, attribute)`` of every LoRA target in ``anchor.blocks``: the ``qkv``/``proj``
    of a timm ``Attention`` (ViT's or SAM's) and the ``fc1``/``fc2`` of a timm ``Mlp`` or ``GluMlp``. Raises
    ``ValueError`` for a block without all four (a family whose blocks compute otherwise, e.g. BEiT's attention reads
    ``qkv.weight`` directly)."""
    found = []
    for b, block in enumerate(anchor.blocks):
        names = set()
        for owner_name, owner in block.named_modules():
            for attr, owner_types in TARGETS.items():
                child = owner._modules.get(attr)
                if isinstance(owner, owner_types) and isinstance(child, nn.Linear):
                    found.append((f"blocks.{b}.{owner_name}.{attr}", owner, attr))
                    names.add(attr)
        if names != set(TARGETS):
            raise ValueError(f"backbone LoRA needs a timm Attention (qkv, proj) and Mlp (fc1, fc2) in every block, "
                             f"run as modules; block {b} of this {type(anchor).__name__} has "
                             f"{sorted(names) or 'none of them'} ({type(block).__name__}; an attention that applies "
                             "qkv.weight itself, as BEiT's does with its q/v biases, cannot take it): train it without "
                             "backbone LoRA (backbone_lora_rank=0)")
    return found


def add_backbone_lora(anchor: nn.Module, rank: int, alpha: float = 1.0) -> List[str]:
    """Put rank-``rank`` LoRA on the attention and MLP linear layers of every block of ``anchor``, in place, and
    freeze everything else but a classifier ``head``; returns the wrapped layers' names (``blocks.0.attn.qkv``).

    The anchor keeps its outputs (``B = 0``) and its state-dict keys (plus the factors).
    """
    if rank < 1:
        raise ValueError(f"backbone LoRA rank must be >= 1 (0: no backbone LoRA), got {rank}")
    targets = _targets(anchor)
    for name, owner, attr in targets:
        setattr(owner, attr, LoRALinear(getattr(owner, attr), rank, alpha))
    for name, param in anchor.named_parameters():
        param.requires_grad_(name.rsplit(".", 1)[-1] in LORA_FACTORS or name.startswith(CLASSIFIER_PREFIX))
    return [name for name, _, _ in targets]


def merge_backbone_lora(module: nn.Module) -> int:
    """Replace every ``LoRALinear`` inside ``module`` by its merged ``nn.Linear``, in place; returns how many."""
    merged = 0
    for owner in list(module.modules()):
        for attr, child in list(owner._modules.items()):
            if isinstance(child, LoRALinear):
                setattr(owner, attr, child.merged())
                merged += 1
    return merged


@contextlib.contextmanager
def base_linears(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` with each ``LoRALinear`` swapped, for the ``with`` block, for a plain ``nn.Linear`` holding the
    same ``weight``/``bias`` tensors (no copy): the deployed layer's shape and cost, to count FLOPs on. Its outputs
    are those of the pretrained layers, without the update; the LoRA layers are put back on exit."""
    swapped = []
    for owner in list(module.modules()):
        for attr, child in list(owner._modules.items()):
            if isinstance(child, LoRALinear):
                plain = nn.Linear(child.in_features, child.out_features, child.bias is not None, device="meta")
                plain.weight, plain.bias = child.weight, child.bias
                setattr(owner, attr, plain)
                swapped.append((owner, attr, child))
    try:
        yield module
    finally:
        for owner, attr, child in swapped:
            setattr(owner, attr, child)


def deployed_numel(module: nn.Module) -> int:
    """Parameters ``module`` holds once deployed: all but the low-rank factors (``lora_down``, ``lora_up``),
    which merge into the weights they update (backbone LoRA and LoRA SL alike)."""
    return sum(p.numel() for name, p in module.named_parameters() if name.rsplit(".", 1)[-1] not in LORA_FACTORS)


def parameter_counts(module: nn.Module) -> Tuple[int, int]:
    """``(trainable, total)`` parameters of ``module`` (the factors included in the total)."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def describe_backbone_lora(model: nn.Module, rank: int, key: str) -> str:
    """What a training run trains, for its log: backbone LoRA on or off (``key`` names the config value holding
    ``rank``) and ``model``'s trainable and total parameters."""
    trainable, total = parameter_counts(model)
    mode = (f"backbone LoRA rank {rank} ({key}={rank}): the anchors are frozen but for the LoRA factors" if rank
            else f"backbone LoRA off ({key}=0): the anchors train in full")
    return f"{mode}; trainable parameters {trainable / 1e6:.3f} M of {total / 1e6:.3f} M"
