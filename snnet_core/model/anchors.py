"""Anchors: timm ViTs built by name and loaded from local checkpoint files.

An anchor is a timm ``VisionTransformer`` (DeiT3, MAE, AugReg, DINOv2), ``Beit`` (BEiT, BEiTv2) or
``VisionTransformerSAM`` (SAM's image encoder); the families and what each needs are in
``snnet_core.model.families``. Nothing here touches the network: ``pretrained`` is a
path on disk (timm ``.safetensors``/``.pth``, or an original release's ``.pth``, e.g. DeiT3's
``{'model': state_dict}``). The position-embedding table stays at the grid the anchor is built for and is
resampled to each input's grid at run time (``snnet_core.model.route``).
"""
from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.models.vision_transformer import VisionTransformer

from snnet_core.model.checkpoint import describe_load_error
from snnet_core.model.families import family_of, family_of_name
from snnet_core.io.file_claims import check_checkpoint_claims, check_checkpoint_path, state_bytes

ImageSize = Union[int, Tuple[int, int], Sequence[int]]
BUILD_ATTR = "snnet_build"  # attribute of an anchor holding how build_anchor made it (see anchor_build)


def _pair(size: ImageSize) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def build_anchor(
    model_name: str,
    img_size: ImageSize = 224,
    pretrained: Optional[str] = None,
    num_classes: int = 0,
    class_token: bool = True,
    drop_path_rate: float = 0.0,
    **overrides: Any,
) -> nn.Module:
    """Build a timm ViT by name (e.g. ``"deit3_small_patch16_224"``).

    Args:
        model_name: a timm model name of a family in ``snnet_core.model.families`` (``VisionTransformer``:
            ``deit3_*``, ``vit_base_patch16_224.mae``, ``vit_small_patch16_224.augreg_in21k``,
            ``vit_small_patch14_dinov2``, ``vit_small_patch14_reg4_dinov2``; ``Beit``: ``beit_*``, ``beitv2_*``;
            ``VisionTransformerSAM``: ``samvit_*``), a pretrained tag allowed. Others are refused
            (``ValueError``).
        img_size: ``H`` or ``(H, W)`` of the grid the position-embedding table is stored (and trained) at.
            Keep the checkpoint's pretraining size (224 for DeiT3), as SN-Netv2's code and detectron2's ViTDet
            do: any input size runs, the table being resampled at every forward
            (``snnet_core.model.route.resample_position_table``). A different size resamples the checkpoint's
            table once, at load (timm's filter), and trains that larger table instead.
        pretrained: optional path of a local checkpoint. ``None`` keeps the random initialisation.
        num_classes: classifier classes (0: no classifier, for backbones).
        class_token: keep the cls token (needed for DPT readout; ViTDet drops it). BEiT always has one, SAM
            none (pass ``class_token=False``).
        drop_path_rate: stochastic depth rate.
        **overrides: other arguments of the timm class (e.g. ``depth=4, embed_dim=32`` for tiny tests).

    The arguments (all but ``pretrained``) are recorded on the model (``anchor_build``) so that a checkpoint
    can rebuild it (``snnet_core.model.checkpoint.load_snnet(path)``).
    """
    family = family_of_name(model_name)
    model = timm.create_model(
        model_name,
        pretrained=False,
        img_size=_pair(img_size),
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
        **family.build_kwargs(class_token),
        **overrides,
    )
    if type(model) is not family.model_class:  # e.g. DeiT's distilled ViT: a dist token the route does not add
        raise TypeError(f"{model_name!r} is a {type(model).__name__}, not a timm {family.model_class.__name__}")
    family.prepare(model)
    build = dict(model_name=model_name, img_size=list(_pair(img_size)), num_classes=num_classes,
                 class_token=class_token, drop_path_rate=drop_path_rate, **overrides)
    setattr(model, BUILD_ATTR, build if _json_safe(build) else None)
    if pretrained is not None:
        load_anchor_checkpoint(model, pretrained)
    return model


def _json_safe(value: Any) -> bool:
    """Whether ``value`` is made of JSON types only (strings, finite numbers, bools, None, lists, dicts)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def anchor_build(model: nn.Module) -> Optional[Dict[str, Any]]:
    """The ``build_anchor`` keyword arguments (without ``pretrained``) that made ``model``, JSON-safe, e.g.
    ``{"model_name": "deit3_small_patch16_224", "img_size": [224, 224], ..., "depth": 4}``; ``None`` for a model
    built otherwise or with an override JSON cannot hold (e.g. a ``norm_layer`` class)."""
    build = getattr(model, BUILD_ATTR, None)
    return dict(build) if build is not None else None


def read_state_dict(path: str, expected_bytes: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Read a checkpoint file (``.safetensors`` or a torch file) without unpickling arbitrary objects.

    ``expected_bytes``: bytes of the model it is read for; a file claiming far more is refused before it is read
    (``snnet_core.io.file_claims.check_checkpoint_claims``, a ``ValueError``)."""
    check_checkpoint_path(path, "checkpoint", ". Weights are never downloaded: put the file there (timm "
                          ".safetensors/.pth or the official DeiT3 .pth) or pass its path.")
    check_checkpoint_claims(path, expected_bytes)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / truncated / not a checkpoint
        raise RuntimeError(f"could not read checkpoint: {describe_load_error(path, exc)}") from exc


def load_anchor_checkpoint(model: nn.Module, path: str) -> None:
    """Load a timm-format or original-release checkpoint into ``model``, resampling position embeddings.

    The file's layout is mapped by timm's ``checkpoint_filter_fn`` of the anchor's family
    (``snnet_core.model.families``). The classifier is skipped when its shape differs (or the model has none) and the cls token is
    dropped for models built without one; any other missing or mismatched key is an error naming it.
    """
    state = read_state_dict(path, state_bytes(model))
    if not isinstance(state, Mapping):
        raise RuntimeError(f"checkpoint {path!r} holds a {type(state).__name__}, not a state dict")
    state = family_of(model).filter_checkpoint(dict(state), model)
    own = model.state_dict()

    def unused(key: str, value: torch.Tensor) -> bool:
        classifier_mismatch = key.startswith("head.") and (key not in own or own[key].shape != value.shape)
        return classifier_mismatch or (key == "cls_token" and model.cls_token is None)

    state = {k: v for k, v in state.items() if not unused(k, v)}
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.startswith("head.")]
    unexpected = [k for k in state if k not in own]
    if mismatched or missing or unexpected:
        raise RuntimeError(
            f"checkpoint {path!r} does not fit this {model.embed_dim}-wide, {len(model.blocks)}-block ViT: "
            + "; ".join(filter(None, [
                f"mismatched {mismatched[:3]}" if mismatched else "",
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {unexpected[:5]}" if unexpected else "",
            ]))
        )
    model.load_state_dict(state, strict=False)


def anchor_signature(model: nn.Module) -> Dict[str, Any]:
    """Architecture summary used to check checkpoints and key caches."""
    return {
        "embed_dim": int(model.embed_dim),
        "depth": len(model.blocks),
        "num_heads": int(model.blocks[0].attn.num_heads),
        "patch_size": list(model.patch_embed.patch_size),
        "num_prefix_tokens": int(model.num_prefix_tokens),
        "mlp_hidden": int(model.blocks[0].mlp.fc1.out_features),
    }


def check_anchor_pair(fast: nn.Module, slow: nn.Module) -> None:
    """Raise ``ValueError`` unless the anchors can be stitched token to token."""
    families = (family_of(fast), family_of(slow))
    if families[0] != families[1]:
        raise ValueError(
            f"anchors must be of one family to be stitched, got a fast {type(fast).__name__} "
            f"({families[0].members}) and a slow {type(slow).__name__} ({families[1].members})"
        )
    if tuple(fast.patch_embed.patch_size) != tuple(slow.patch_embed.patch_size):
        raise ValueError(
            f"anchors must share one patch size to be stitched token to token, got "
            f"{tuple(fast.patch_embed.patch_size)} and {tuple(slow.patch_embed.patch_size)}"
        )
    if fast.num_prefix_tokens != slow.num_prefix_tokens:
        raise ValueError(
            f"anchors must have the same prefix (cls/register) tokens, got {fast.num_prefix_tokens} "
            f"and {slow.num_prefix_tokens}"
        )
    if len(fast.blocks) > len(slow.blocks):
        raise ValueError(
            f"the fast anchor ({len(fast.blocks)} blocks) is deeper than the slow one ({len(slow.blocks)}): "
            "pass anchors as (fast/small, slow/large)"
        )


UPSTREAM_LAYER_NORM_EPS = 1e-5  # mmcv build_norm_layer(dict(type="LN")) keeps nn.LayerNorm's default


class ResidualFFNMlp(Mlp):
    """timm ``Mlp`` that adds its input to its output, ``(B, N, C) -> (B, N, C)``.

    SN-Netv2's depth code builds its DeiT3 layers with mmcv's ``FFN`` and calls it without an ``identity``,
    and mmcv's FFN then adds its own input: each block computes ``x + gamma_2 * (LN2(x) + MLP(LN2(x)))``
    instead of DeiT3's ``x + gamma_2 * MLP(LN2(x))``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def use_upstream_layer_math(anchor: VisionTransformer) -> None:
    """Make a timm DeiT3 ``anchor`` compute the layers of SN-Netv2's depth code (FFNs add their input,
    LayerNorm eps 1e-5), in place; parameters and state-dict keys are unchanged."""
    for block in anchor.blocks:
        if not isinstance(block.mlp, Mlp):
            raise TypeError(f"expected timm Mlp blocks, got {type(block.mlp).__name__}")
        block.mlp.__class__ = ResidualFFNMlp
    for module in anchor.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = UPSTREAM_LAYER_NORM_EPS
