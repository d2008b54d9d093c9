"""Anchors of other timm families (snnet_core.model.families): MAE/AugReg/DINOv2 (plain VisionTransformer weights),
BEiT/BEiTv2 (per-block relative position bias), SAM (windowed blocks on the grid, no prefix tokens); their official
checkpoint layouts, LS init, FLOPs."""
import copy

import pytest
import torch
from timm.models import beit as timm_beit
from timm.models import vision_transformer_sam as timm_sam
from timm.models.vision_transformer import VisionTransformer

from snnet_core import StitchedViT, build_anchor, build_flops_table, check_anchor_pair, count_gflops, export_stitch
from snnet_core.model.families import GridRelPosBlock, TokenMapBlock, relative_position_bias
from snnet_core.model.route import resample_position_table
from snnet_core.training.ls_init import calibration_pairs, ls_init_stitching_layers, reconstruction_error

TINY = (dict(embed_dim=32, depth=4, num_heads=2), dict(embed_dim=48, depth=8, num_heads=3))
OUT = (1, 3, 5, 7)


def tiny_pair(name, img_size, seed=0, **kwargs):
    """Two tiny anchors of one timm model (4 blocks/32 wide and 8 blocks/48 wide) with non-zero relative position
    tables and layer scales (timm initialises them to zero and ~1e-5, which would hide what they do)."""
    torch.manual_seed(seed)
    anchors = [build_anchor(name, img_size=img_size, **size, **kwargs) for size in TINY]
    with torch.no_grad():
        for anchor in anchors:
            for name_, p in anchor.named_parameters():
                if any(key in name_ for key in ("relative_position_bias_table", "gamma", "rel_pos", "pos_embed")):
                    p.normal_(std=0.5)
    return anchors


def beit_pair(img_size=32):
    return tiny_pair("beitv2_base_patch16_224", img_size)


def dinov2_pair(img_size=28):
    return tiny_pair("vit_small_patch14_reg4_dinov2", img_size)


SAM_TINY = dict(class_token=False, window_size=2, global_attn_indexes=(1, 3))  # windows of 2x2 patches, 2 global


def sam_pair(img_size=64):
    return tiny_pair("samvit_base_patch16", img_size, **SAM_TINY)


@pytest.mark.parametrize("name", [
    "vit_base_patch16_224.mae",  # MAE: plain ViT weights (cls token, position entry for it, final norm)
    "vit_small_patch16_224.augreg_in21k",  # AugReg: plain ViT weights
    "vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2",  # DINOv2: patch 14, LayerScale, registers
])
def test_plain_vit_weights_build_by_their_timm_names(name):
    anchor = build_anchor(name, img_size=112, embed_dim=32, depth=2, num_heads=2)
    assert type(anchor) is VisionTransformer
    assert anchor.num_prefix_tokens == (5 if "reg4" in name else 1)
    patch = anchor.patch_embed.patch_size[0]
    grid = (3, 4)
    x = torch.randn(1, 3, grid[0] * patch, grid[1] * patch)
    net = StitchedViT(anchor, copy.deepcopy(anchor)).eval()
    with torch.no_grad():
        (features,) = net(x).feature_maps()
    assert features.shape == (1, 32, *grid)


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])  # windows padded at 3x5
def test_sam_anchors_run_as_timms_sam_and_every_stitch_runs_and_exports(size):
    fast, slow = sam_pair()
    net = StitchedViT(fast, slow, out_indices=OUT).eval()
    assert all(isinstance(b, TokenMapBlock) for a in net.anchors for b in a.blocks) and net.num_prefix_tokens == 0
    x = torch.randn(2, 3, *size)
    reference = copy.deepcopy(slow)
    for block in reference.blocks:  # timm's own blocks, on (B, H, W, C) maps
        block.__class__ = timm_sam.Block
    with torch.no_grad():
        expected = reference.forward_intermediates(x, indices=list(OUT), intermediates_only=True)
        for got, want in zip(net(x, stitch_id=1).feature_maps(), expected):
            assert torch.equal(got, want)
        for stitch in net.space:
            out = net(x, stitch_id=stitch.id)
            exported = export_stitch(net, stitch.id).eval()
            assert all(torch.equal(a, b) for a, b in zip(exported(x).features, out.features)), stitch.route
    with pytest.raises(TypeError, match="neck is not"):
        net.classify(x)
    with pytest.raises(ValueError, match="SAM's image encoder has no cls token"):
        build_anchor("samvit_base_patch16", img_size=64, **TINY[0])


def test_anchors_of_two_families_are_refused_naming_both():
    vit = build_anchor("deit3_small_patch16_224", img_size=32, **TINY[0])
    beit = build_anchor("beitv2_base_patch16_224", img_size=32, **TINY[1])
    with pytest.raises(ValueError, match=r"one family.*fast VisionTransformer \(DeiT3.*slow Beit \(BEiT, BEiTv2"):
        check_anchor_pair(vit, beit)
    sam = build_anchor("samvit_base_patch16", img_size=32, **SAM_TINY, **TINY[1])
    with pytest.raises(ValueError, match=r"one family.*slow VisionTransformerSAM \(SAM's image encoder"):
        check_anchor_pair(vit, sam)
    with pytest.raises(ValueError, match="not of a family the engine can stitch"):
        build_anchor("eva02_tiny_patch14_224", img_size=28, **TINY[0])
    with pytest.raises(ValueError, match="BEiT anchors always carry a cls token"):
        build_anchor("beitv2_base_patch16_224", img_size=32, class_token=False, **TINY[0])
    with pytest.raises(ValueError, match="shared relative position bias"):
        build_anchor("beit_base_patch16_224", img_size=32, use_shared_rel_pos_bias=True, **TINY[0])


@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
def test_beit_anchors_run_as_timms_beit_at_its_size_and_resized_as_timm_does(size):
    fast, slow = beit_pair(img_size=32)
    net = StitchedViT(fast, slow, out_indices=OUT).eval()
    x = torch.randn(2, 3, *size)
    grid = (size[0] // 16, size[1] // 16)
    for which, anchor, indices in ((0, fast, net.fast_out_indices), (1, slow, OUT)):
        reference = copy.deepcopy(anchor)
        for block in reference.blocks:  # timm's own modules, not the grid-aware ones
            block.__class__, block.attn.__class__ = timm_beit.Block, timm_beit.Attention
        reference.set_input_size(size)  # timm: relative position tables resized to the new window once
        with torch.no_grad():
            expected = reference.forward_intermediates(x, indices=list(indices), intermediates_only=True)
            ours = net.anchor_block_outputs(x, which, indices)  # what LS init reads
            for b, want in zip(indices, expected):
                assert torch.equal(ours[b][:, 1:].transpose(1, 2).reshape(want.shape), want)
            assert torch.equal(net.classify(x, stitch_id=which), reference(x))
    with torch.no_grad():
        for got, want in zip(net(x, stitch_id=1).feature_maps(), expected):  # the slow anchor's dense features
            assert got.shape[-2:] == grid and torch.equal(got, want)


def test_beit_bias_at_another_grid_is_timms_resized_table_and_trains():
    (anchor, _) = beit_pair(img_size=32)
    attn = anchor.blocks[0].attn
    resized = copy.deepcopy(attn)
    timm_beit.Attention.set_window_size(resized, (3, 4))  # timm's own resize (a new parameter)
    bias = relative_position_bias(attn.relative_position_bias_table, (2, 2), (3, 4))
    assert bias.shape == (1, 2, 13, 13)
    assert torch.equal(bias, timm_beit.Attention._get_rel_pos_bias(resized))
    bias.sum().backward()  # the stored table learns from inputs of any size
    assert attn.relative_position_bias_table.grad.abs().sum() > 0


def test_every_stitch_of_a_beit_pair_runs_and_exports_at_two_sizes():
    net = StitchedViT(*beit_pair(), lora_rank=2, out_indices=OUT).eval()
    assert all(isinstance(b, GridRelPosBlock) for a in net.anchors for b in a.blocks)
    for size in ((32, 32), (48, 64)):
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            for stitch in net.space:
                out = net(x, stitch_id=stitch.id)
                assert [tuple(m.shape) for m in out.feature_maps()] == [(1, 48, size[0] // 16, size[1] // 16)] * 4
                if stitch.kind in ("FSF", "SFS"):  # routes through a middle anchor: its blocks' tables exported too
                    exported = export_stitch(net, stitch.id).eval()
                    assert all(torch.equal(a, b) for a, b in zip(exported(x).features, out.features)), stitch.route


def test_every_stitch_of_a_dinov2_pair_with_registers_drops_the_prefix_tokens():
    fast, slow = dinov2_pair(img_size=28)
    net = StitchedViT(fast, slow, out_indices=OUT).eval()
    assert net.num_prefix_tokens == 5 and net.patch_size == 14
    x = torch.randn(1, 3, 42, 56)  # a 3x4 grid; the tables are stored at 2x2 and resampled
    with torch.no_grad():
        for stitch in net.space:
            out = net(x, stitch_id=stitch.id)
            assert out.tokens.shape[1] == 5 + 12
            for tokens, fmap in zip(out.features, out.feature_maps()):
                assert torch.equal(fmap, tokens[:, 5:].transpose(1, 2).reshape(1, 48, 3, 4))
        # the registers and the cls token carry no position embedding; the patches get the resampled table
        x_tokens = slow.patch_embed(x).flatten(1, 2) + resample_position_table(slow, (3, 4))
        first = torch.cat([slow.cls_token, slow.reg_token, x_tokens], dim=1)
        assert torch.equal(net.anchor_block_outputs(x, 1, [0])[0], slow.blocks[0](first))


@pytest.mark.parametrize("family", ["beit", "dinov2", "sam"])
def test_ls_init_and_flops_table_on_a_tiny_pair(family):
    fast, slow = {"beit": beit_pair, "dinov2": dinov2_pair, "sam": sam_pair}[family]()
    net = StitchedViT(fast, slow, lora_rank=0, out_indices=OUT).eval()
    size = (42, 56) if family == "dinov2" else (48, 64)
    prefix, patches = {"beit": 1, "dinov2": 5, "sam": 0}[family], 12
    torch.manual_seed(1)
    calib = torch.randn(6, 3, *size)
    before = {name: reconstruction_error(net.get_submodule(name), x, y) for name, x, y in calibration_pairs(net, calib)}
    errors = ls_init_stitching_layers(net, calib.split(3), num_images=6, progress=False)
    for name, x, y in calibration_pairs(net, calib):
        assert x.shape[1] == prefix + patches  # prefix tokens (cls, registers) are calibration tokens too
        assert errors[name] < before[name], name

    table = build_flops_table(net, size)
    x = torch.zeros(1, 3, *size)
    one_of_each_kind = {stitch.kind: stitch for stitch in net.space}.values()  # a trace of BEiT's resize is slow
    for stitch in one_of_each_kind:
        exported = export_stitch(net, stitch.id)
        direct = count_gflops(_Features(exported), (x,))
        assert table.gflops[stitch.id] == pytest.approx(direct, rel=1e-9), stitch.route
    if family == "dinov2":  # the 4 register tokens are counted: more FLOPs than the same anchors without them
        plain = StitchedViT(*tiny_pair("vit_small_patch14_dinov2", 28), out_indices=OUT)
        fewer = build_flops_table(plain, size)
        assert all(table.gflops[sid] > fewer.gflops[sid] for sid in net.space.ids)


class _Features(torch.nn.Module):
    def __init__(self, exported):
        super().__init__()
        self.exported = exported

    def forward(self, x):
        out = self.exported(x)
        return (out.tokens, *out.features)


# ------------------------------------------------------------------------------------------------------------
# Official checkpoint layouts, written with random weights in the original repositories' key names


def _save(path, state):
    torch.save(state, path)
    return str(path)


def test_dinov2_official_layout_loads_through_timms_filter(tmp_path):
    """facebookresearch/dinov2 ``dinov2_vits14_reg4_pretrain.pth``: a flat state dict, ``register_tokens``,
    ``mask_token``, a ``pos_embed`` with a cls entry on the 37x37 grid of 518x518 images."""
    model = build_anchor("vit_small_patch14_reg4_dinov2", img_size=518, embed_dim=32, depth=2, num_heads=2)
    torch.manual_seed(0)
    official = {k: torch.randn_like(v) for k, v in model.state_dict().items() if k not in ("reg_token", "pos_embed")}
    official.update(register_tokens=torch.randn(1, 4, 32), mask_token=torch.randn(1, 32),
                    pos_embed=torch.randn(1, 1 + 37 * 37, 32))
    path = _save(tmp_path / "dinov2_vits14_reg4_pretrain.pth", official)

    loaded = build_anchor("vit_small_patch14_reg4_dinov2", img_size=518, pretrained=path, embed_dim=32, depth=2,
                          num_heads=2)
    assert torch.equal(loaded.reg_token, official["register_tokens"])
    assert torch.equal(loaded.cls_token, official["cls_token"] + official["pos_embed"][:, 0])  # timm's conversion
    assert torch.equal(loaded.pos_embed, official["pos_embed"][:, 1:])
    assert torch.equal(loaded.blocks[1].ls2.gamma, official["blocks.1.ls2.gamma"])
    smaller = build_anchor("vit_small_patch14_reg4_dinov2", img_size=224, pretrained=path, embed_dim=32, depth=2,
                           num_heads=2)
    assert smaller.pos_embed.shape == (1, 16 * 16, 32)  # resampled once, at load, by timm's filter


def test_mae_official_layout_loads(tmp_path):
    """facebookresearch/mae ``mae_pretrain_vit_base.pth``: ``{'model': state_dict}`` in timm's ViT names, a
    ``pos_embed`` with a cls entry."""
    model = build_anchor("vit_base_patch16_224.mae", embed_dim=32, depth=2, num_heads=2)
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    assert state["pos_embed"].shape == (1, 1 + 14 * 14, 32)
    loaded = build_anchor("vit_base_patch16_224.mae", pretrained=_save(tmp_path / "mae.pth", {"model": state}),
                          embed_dim=32, depth=2, num_heads=2)
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())


def _beit_official(seed=0):
    """BEiT's own layout (microsoft/unilm beit, beit2): ``{'model': ...}`` with ``relative_position_index`` buffers
    and tables of a 14x14 window (224x224 images)."""
    torch.manual_seed(seed)
    at_224 = build_anchor("beitv2_base_patch16_224", embed_dim=32, depth=2, num_heads=2)
    state = {k: torch.randn_like(v) for k, v in at_224.state_dict().items()}
    for b, block in enumerate(at_224.blocks):
        state[f"blocks.{b}.attn.relative_position_index"] = block.attn.relative_position_index.clone()
    return state


def test_beit_official_layout_loads_with_tables_resized_by_timm(tmp_path):
    state = _beit_official()
    path = _save(tmp_path / "beitv2_base_patch16_224_pt1k_ft21kto1k.pth", {"model": state})
    loaded = build_anchor("beitv2_base_patch16_224", img_size=32, pretrained=path, embed_dim=32, depth=2, num_heads=2)
    assert torch.equal(loaded.blocks[1].gamma_1, state["blocks.1.gamma_1"])
    assert torch.equal(loaded.blocks[0].attn.q_bias, state["blocks.0.attn.q_bias"])
    table = loaded.blocks[0].attn.relative_position_bias_table
    assert table.shape == (3 * 3 + 3, 2)  # a 2x2 window
    expected = relative_position_bias(state["blocks.0.attn.relative_position_bias_table"], (14, 14), (2, 2))
    assert torch.equal(loaded.blocks[0].attn._get_rel_pos_bias(), expected)


def test_beit_pretraining_layout_shares_its_table_with_every_block(tmp_path):
    state = _beit_official()
    shared = state.pop("blocks.0.attn.relative_position_bias_table")
    del state["blocks.1.attn.relative_position_bias_table"]
    state["rel_pos_bias.relative_position_bias_table"] = shared
    path = _save(tmp_path / "beit_base_patch16_224_pt22k.pth", {"model": state})
    loaded = build_anchor("beitv2_base_patch16_224", pretrained=path, embed_dim=32, depth=2, num_heads=2)
    assert all(torch.equal(b.attn.relative_position_bias_table, shared) for b in loaded.blocks)


def test_sam_official_layout_loads_through_timms_filter(tmp_path):
    """facebookresearch/segment-anything ``sam_vit_b_01ec64.pth``: a flat state dict of the whole SAM, the encoder
    under ``image_encoder.`` with ``mlp.lin1``/``mlp.lin2``, beside the prompt encoder and mask decoder."""
    model = build_anchor("samvit_base_patch16", img_size=64, **SAM_TINY, **TINY[0])
    torch.manual_seed(0)
    encoder = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    official = {"image_encoder." + k.replace("mlp.fc", "mlp.lin"): v for k, v in encoder.items()}
    official.update({"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.randn(2, 128),
                     "mask_decoder.iou_token.weight": torch.randn(1, 256)})
    path = _save(tmp_path / "sam_vit_b_01ec64.pth", official)
    loaded = build_anchor("samvit_base_patch16", img_size=64, pretrained=path, **SAM_TINY, **TINY[0])
    assert all(torch.equal(v, encoder[k]) for k, v in loaded.state_dict().items())
    assert "blocks.0.mlp.fc1.weight" in encoder and "neck.0.weight" in encoder


def test_beit_sn_net_checkpoint_rebuilds_from_its_config(tmp_path):
    from snnet_core import load_snnet, save_snnet

    net = StitchedViT(*beit_pair(), out_indices=OUT).eval()
    path = str(tmp_path / "snnet.pth")
    save_snnet(path, net)
    again = load_snnet(path).eval()
    x, last = torch.randn(1, 3, 48, 64), net.space.ids[-1]
    with torch.no_grad():
        assert torch.equal(again(x, stitch_id=last).features[0], net(x, stitch_id=last).features[0])
