"""The timm model families an anchor may come from, and how the engine builds, loads and runs each.

- ``vit`` (timm ``VisionTransformer``): DeiT3, and the plain-ViT weights of MAE (``vit_base_patch16_224.mae``),
  AugReg (``vit_small_patch16_224.augreg_in21k``) and DINOv2 (``vit_small_patch14_dinov2``; with register tokens
  ``vit_small_patch14_reg4_dinov2``). Blocks map tokens ``(B, P + H*W, C)`` to tokens of the same shape
  (``P`` prefix tokens: cls and registers).
- ``beit`` (timm ``Beit``: BEiT, BEiTv2): the same token interface, but every block's attention adds a relative
  position bias that depends on the patch grid. Its blocks run as ``GridRelPosBlock``, which takes the grid of
  the tokens it is given; at a grid other than the one the tables are stored for, the bias is the table resized
  by timm's ``resize_rel_pos_bias_table``, as timm's ``Beit.set_input_size`` resizes it.
- ``sam`` (timm ``VisionTransformerSAM``: SAM's image encoder, ``samvit_*``): no prefix tokens, a ``(1, H, W, C)``
  absolute table resampled as timm's SAM does, and blocks that attend in windows (or globally) on a ``(B, H, W, C)``
  map with relative positions: they run as ``TokenMapBlock``, which lays the tokens out on the grid it is given.
  Dense features are the blocks' tokens, as for the other families (before the final norm, here SAM's
  convolutional neck); the neck and a classifier are not run (``classify`` refuses SAM anchors).

Each family loads checkpoints through timm's own ``checkpoint_filter_fn`` of its module, which maps the original
repositories' layouts (DeiT3 ``gamma_1``, DINOv2 ``register_tokens``/``mask_token``/37x37 ``pos_embed``, MAE's
and BEiT's ``{'model': ...}`` wrapping, BEiT's ``relative_position_index`` buffers and table sizes, SAM's
``image_encoder.`` prefix and ``mlp.lin1``/``lin2`` names). Other timm models (e.g. EVA) are refused by name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import timm
import torch
import torch.nn as nn
from timm.layers import resize_rel_pos_bias_table
from timm.models import beit as timm_beit
from timm.models import vision_transformer as timm_vit
from timm.models import vision_transformer_sam as timm_sam

Grid = Tuple[int, int]
SHARED_REL_POS_TABLE = "rel_pos_bias.relative_position_bias_table"  # BEiT pre-training checkpoints


@dataclasses.dataclass(frozen=True)
class AnchorFamily:
    """How ``build_anchor`` makes and loads the anchors of one timm model class.

    Attributes:
        name: short name used in messages (``"vit"``, ``"beit"``).
        model_class: the timm class its models are.
        members: the pretrained weights it covers, for messages.
        build_kwargs: ``class_token -> timm.create_model`` keyword arguments the engine needs.
        prepare: applied to a new model, in place (e.g. its blocks made grid-aware).
        filter_checkpoint: ``(state dict, model) -> state dict`` in the model's key names and shapes.
    """

    name: str
    model_class: type
    members: str
    build_kwargs: Callable[[bool], Dict[str, Any]]
    prepare: Callable[[nn.Module], None]
    filter_checkpoint: Callable[[Dict[str, torch.Tensor], nn.Module], Dict[str, torch.Tensor]]


# ------------------------------------------------------------------------------------------------------------
# BEiT: blocks whose relative position bias follows the grid
class GridRelPosAttention(timm_beit.Attention):
    """timm BEiT ``Attention`` whose relative position bias is taken at ``call_grid``, the patch grid of the
    tokens of the current call (set by ``GridRelPosBlock``; ``None``: timm's bias at ``window_size``)."""

    call_grid: Optional[Grid] = None

    def _get_rel_pos_bias(self) -> torch.Tensor:
        grid = self.call_grid
        if grid is None or grid == tuple(self.window_size):
            return super()._get_rel_pos_bias()
        return relative_position_bias(self.relative_position_bias_table, tuple(self.window_size), grid)


class GridRelPosBlock(timm_beit.Block):
    """timm BEiT ``Block`` that takes the patch grid of its tokens: ``(B, 1 + H*W, C), (H, W) -> (B, 1 + H*W, C)``.

    Parameters and state-dict keys are timm's; only the bias of a grid other than the stored window differs from
    timm's block (where timm's would fail on the shapes).
    """

    def forward(self, x: torch.Tensor, grid: Optional[Grid] = None,
                shared_rel_pos_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not isinstance(self.attn, GridRelPosAttention):
            raise TypeError("GridRelPosBlock needs a GridRelPosAttention (made by families.prepare_beit)")
        self.attn.call_grid = None if grid is None else (int(grid[0]), int(grid[1]))
        try:
            return super().forward(x, shared_rel_pos_bias=shared_rel_pos_bias)
        finally:
            self.attn.call_grid = None


def relative_position_bias(table: torch.Tensor, window: Grid, grid: Grid) -> torch.Tensor:
    """BEiT's relative position bias ``(1, heads, 1 + H*W, 1 + H*W)`` for a ``grid = (H, W)`` from a ``table``
    ``((2*Wh-1)*(2*Ww-1) + 3, heads)`` stored for ``window = (Wh, Ww)``: the table resized as timm's
    ``Attention.set_window_size`` resizes it (differentiable), then indexed as timm's ``_get_rel_pos_bias``."""
    heads = table.shape[1]
    entries = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
    resized = resize_rel_pos_bias_table(table, new_window_size=grid, new_bias_shape=(entries, heads),
                                        old_window_size=window)
    index = timm_beit.gen_relative_position_index(grid, device=table.device)
    tokens = grid[0] * grid[1] + 1
    return resized[index.view(-1)].view(tokens, tokens, heads).permute(2, 0, 1).contiguous().unsqueeze(0)


def prepare_beit(model: nn.Module) -> None:
    """Make a timm ``Beit`` run at any input size: patch embedding without the size check, grid-aware blocks."""
    if model.rel_pos_bias is not None:
        raise ValueError(
            "BEiT anchors with a shared relative position bias (use_shared_rel_pos_bias=True) are not supported: "
            "one bias module serves all blocks of an anchor, while a stitched route runs the blocks of two anchors "
            "and an exported stitch keeps only its own blocks. Build the anchor with per-block tables "
            "(use_rel_pos_bias=True, timm's default for beit*/beitv2* names): a checkpoint holding a shared table "
            f"({SHARED_REL_POS_TABLE}) loads into every block's table, as BEiT's fine-tuning code does"
        )
    model.patch_embed.strict_img_size = False
    for block in model.blocks:
        block.__class__ = GridRelPosBlock
        block.attn.__class__ = GridRelPosAttention


def filter_beit_checkpoint(state: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm's BEiT ``checkpoint_filter_fn``, after copying a shared relative position table (BEiT pre-training
    checkpoints) into every block that has none, as BEiT's own fine-tuning code does."""
    state = state.get("model", state)
    state = dict(state.get("module", state))
    shared = state.pop(SHARED_REL_POS_TABLE, None)
    if shared is not None:
        for b in range(len(model.blocks)):
            state.setdefault(f"blocks.{b}.attn.relative_position_bias_table", shared)
    return timm_beit.checkpoint_filter_fn(state, model)


def _beit_kwargs(class_token: bool) -> Dict[str, Any]:
    if not class_token:
        raise ValueError("BEiT anchors always carry a cls token (timm's Beit has no class_token option and its "
                         "relative position tables hold cls entries): build them with class_token=True")
    return {}


# ------------------------------------------------------------------------------------------------------------
# SAM: blocks on a (B, H, W, C) map
class TokenMapBlock(timm_sam.Block):
    """timm SAM ``Block`` run on tokens: ``(B, H*W, C), (H, W) -> (B, H*W, C)``, laid out on the ``(H, W)`` grid for
    its windowed or global attention. Without ``grid`` it is timm's block on a ``(B, H, W, C)`` map."""

    def forward(self, x: torch.Tensor, grid: Optional[Grid] = None) -> torch.Tensor:
        if grid is None:
            return super().forward(x)
        b, n, c = x.shape
        return super().forward(x.reshape(b, int(grid[0]), int(grid[1]), c)).reshape(b, n, c)


def prepare_sam(model: nn.Module) -> None:
    """Give a timm ``VisionTransformerSAM`` the prefix-token attributes of the other families (none) and blocks that
    run on tokens."""
    model.num_prefix_tokens = 0
    model.cls_token = None
    for block in model.blocks:
        block.__class__ = TokenMapBlock


def _sam_kwargs(class_token: bool) -> Dict[str, Any]:
    if class_token:
        raise ValueError("SAM's image encoder has no cls token: build its anchors with class_token=False")
    return {}


GRID_BLOCKS = (GridRelPosBlock, TokenMapBlock)  # blocks that take the patch grid of their tokens


# ------------------------------------------------------------------------------------------------------------
def _vit_kwargs(class_token: bool) -> Dict[str, Any]:
    return dict(
        class_token=class_token,
        global_pool="token" if class_token else "avg",
        fc_norm=False,  # keep the checkpoint's final `norm` whichever pooling is used
        dynamic_img_size=True,
    )


VIT = AnchorFamily(
    name="vit", model_class=timm_vit.VisionTransformer, members="DeiT3, MAE, AugReg, DINOv2 (timm VisionTransformer)",
    build_kwargs=_vit_kwargs, prepare=lambda model: None,
    filter_checkpoint=lambda state, model: timm_vit.checkpoint_filter_fn(state, model, adapt_layer_scale=True),
)
BEIT = AnchorFamily(
    name="beit", model_class=timm_beit.Beit, members="BEiT, BEiTv2 (timm Beit)",
    build_kwargs=_beit_kwargs, prepare=prepare_beit, filter_checkpoint=filter_beit_checkpoint,
)
SAM = AnchorFamily(
    name="sam", model_class=timm_sam.VisionTransformerSAM, members="SAM's image encoder (timm VisionTransformerSAM)",
    build_kwargs=_sam_kwargs, prepare=prepare_sam, filter_checkpoint=timm_sam.checkpoint_filter_fn,
)
# by the timm module defining the name (DeiT3 names are registered in timm.models.deit)
FAMILIES = {"timm.models.vision_transformer": VIT, "timm.models.deit": VIT, "timm.models.beit": BEIT,
            "timm.models.vision_transformer_sam": SAM}


def supported_families() -> str:
    """``"vit: DeiT3, ...; beit: BEiT, BEiTv2 (timm Beit)"`` for messages."""
    return "; ".join(f"{f.name}: {f.members}" for f in FAMILIES.values())


def family_of_name(model_name: str) -> AnchorFamily:
    """The family of a timm model name (a pretrained tag such as ``.mae`` allowed), without building it.

    Raises ``ValueError`` for an unknown name or a model of another timm module.
    """
    if not timm.is_model(model_name):
        raise ValueError(f"unknown timm model {model_name!r}")
    module = timm.models.model_entrypoint(model_name).__module__
    if module not in FAMILIES:
        raise ValueError(f"{model_name!r} is a model of {module}, not of a family the engine can stitch "
                         f"({supported_families()})")
    return FAMILIES[module]


def family_of(model: nn.Module) -> AnchorFamily:
    """The family of a built anchor; ``TypeError`` for any other module."""
    for family in FAMILIES.values():
        if type(model) is family.model_class:
            return family
    raise TypeError(f"a {type(model).__name__} is not an anchor of a family the engine can stitch "
                    f"({supported_families()})")
