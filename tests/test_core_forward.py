"""Stitched forward: shapes for every stitch, anchors equal timm, dense-feature routing, export."""
import pytest
import torch

from snnet_core import StitchedViT, build_anchor, export_stitch, tokens_to_map
from snnet_core.model.route import embed_images
from snnet_core.model.stitch_space import FAST, SLOW
from tests.conftest import tiny_anchor, tiny_snnet


@pytest.mark.parametrize("size", [(32, 32), (48, 80)])
def test_every_stitch_gives_dense_features_at_the_slow_width(snnet, size):
    x = torch.randn(2, 3, *size)
    grid = (size[0] // 16, size[1] // 16)
    for st in snnet.space:
        out = snnet(x, st.id)
        assert out.grid == grid
        assert [tuple(f.shape) for f in out.features] == [(2, 1 + grid[0] * grid[1], 48)] * 4, st.route
        assert out.tokens.shape[-1] == (32 if st.last_anchor == FAST else 48)
        assert [tuple(m.shape) for m in out.feature_maps()] == [(2, 48, *grid)] * 4


def test_anchor_stitches_reproduce_timm_exactly():
    net = tiny_snnet(num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    for sid, anchor in zip(net.space.anchor_ids(), net.anchors):
        out = net(x, sid)
        torch.testing.assert_close(anchor.norm(out.tokens), anchor.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(net.classify(x, sid), anchor(x), rtol=0, atol=0)
    # dense features of the slow anchor are its raw block outputs
    blocks = net.anchor_block_outputs(x, SLOW)
    for feat, idx in zip(net(x, 1).features, net.out_indices):
        torch.testing.assert_close(feat, blocks[idx], rtol=0, atol=0)


def test_position_table_is_resampled_per_forward_as_detectron2_and_upstream_do():
    """The table stays a parameter at its built grid; other grids get it bicubic, align_corners=False, without
    antialiasing (detectron2's ``get_abs_pos``, SN-Netv2's mmseg DeiT3), and its gradient reaches the table."""
    from detectron2.modeling.backbone.utils import get_abs_pos

    anchor = tiny_anchor(img_size=64)  # 4x4 table (DeiT3: no cls entry)
    with torch.no_grad():
        anchor.pos_embed.normal_()
    images = torch.randn(2, 3, 96, 160)  # 6x10 grid
    tokens, grid = embed_images(anchor, images)
    expected_pos = get_abs_pos(anchor.pos_embed, False, grid).reshape(1, 60, -1)
    patches = anchor.patch_embed(images).flatten(1, 2)
    torch.testing.assert_close(tokens[:, 1:], patches + expected_pos)
    torch.testing.assert_close(tokens[:, :1], anchor.cls_token.expand(2, -1, -1))
    timm_tokens = anchor._pos_embed(anchor.patch_embed(images))  # timm's antialiased resampling differs
    assert (timm_tokens - tokens).abs().max() > 0.05
    tokens.sum().backward()
    assert anchor.pos_embed.grad is not None and anchor.pos_embed.grad.shape == (1, 16, 32)


def test_fast_features_go_through_their_small_to_large_layer(snnet):
    x = torch.randn(2, 3, 32, 32)
    blocks = snnet.anchor_block_outputs(x, FAST)
    feats = snnet(x, 0).features
    for feat, idx in zip(feats, snnet.fast_out_indices):
        torch.testing.assert_close(feat, snnet.stitch_s2l[idx](blocks[idx]))


def test_stitch_route_is_what_runs(snnet):
    """An FS stitch equals: fast blocks, its s2l layer, then the remaining slow blocks."""
    st = next(s for s in snnet.space if s.kind == "FS")
    x = torch.randn(1, 3, 32, 32)
    fast, slow = snnet.anchors
    h, _ = embed_images(fast, x)
    (f_seg, s_seg), (link,) = st.segments, st.links
    for b in range(f_seg.start, f_seg.end):
        h = fast.blocks[b](h)
    h = snnet.stitch_s2l[link.position](h)
    for b in range(s_seg.start, s_seg.end):
        h = slow.blocks[b](h)
    torch.testing.assert_close(snnet(x, st.id).tokens, h)


def test_selected_stitch_is_used_by_default(snnet):
    x = torch.randn(1, 3, 32, 32)
    snnet.set_stitch(5)
    torch.testing.assert_close(snnet(x).tokens, snnet(x, 5).tokens)
    with pytest.raises(KeyError, match="unknown stitch id 99"):
        snnet.set_stitch(99)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        snnet(torch.randn(1, 32, 32))


def test_anchors_must_share_patch_size_and_order():
    fast = tiny_anchor()
    with pytest.raises(ValueError, match="patch size"):
        StitchedViT(fast, tiny_anchor(patch_size=8, embed_dim=48, depth=8, num_heads=3))
    with pytest.raises(ValueError, match="deeper"):
        StitchedViT(tiny_anchor(embed_dim=48, depth=8, num_heads=3), fast)


def test_no_class_token_variant_for_vitdet():
    torch.manual_seed(0)
    fast = tiny_anchor(class_token=False)
    slow = tiny_anchor(class_token=False, embed_dim=48, depth=8, num_heads=3)
    net = StitchedViT(fast, slow, lora_rank=2).eval()
    out = net(torch.randn(1, 3, 64, 64), 7)
    assert out.num_prefix_tokens == 0 and out.features[0].shape == (1, 16, 48)
    assert tokens_to_map(out.features[0], out.grid, 0).shape == (1, 48, 4, 4)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_export_equals_in_network_outputs_and_holds_only_its_blocks(lora_rank):
    net = tiny_snnet(lora_rank=lora_rank, num_classes=5).eval()
    with torch.no_grad():  # a trained LoRA update, so that merging matters
        for layer in list(net.stitch_s2l) + list(net.stitch_l2s):
            if layer.rank:
                layer.lora_up.normal_(std=0.1)
    x = torch.randn(2, 3, 48, 64)
    full_params = sum(p.numel() for p in net.parameters())
    for kind in ("anchor", "FS", "SF", "FSF", "SFS"):
        st = [s for s in net.space if s.kind == kind][-1]
        exported = export_stitch(net, st.id)
        a, b = net(x, st.id), exported(x)
        torch.testing.assert_close(b.tokens, a.tokens, rtol=1e-5, atol=1e-5)
        for fa, fb in zip(a.features, b.features):
            torch.testing.assert_close(fb, fa, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(exported.classify(x), net.classify(x, st.id), rtol=1e-5, atol=1e-5)
        n_fast, n_slow = st.num_blocks()
        blocks = [m for m in exported.modules() if type(m).__name__ == "Block"]
        assert len(blocks) == n_fast + n_slow
        assert not any(type(m).__name__ == "StitchingLayer" for m in exported.modules())  # LoRA merged
        assert sum(p.numel() for p in exported.parameters()) < full_params
        assert exported.route == st.route


def test_export_does_not_share_weights_with_the_snnet():
    net = tiny_snnet().eval()
    exported = export_stitch(net, 3)
    x = torch.randn(1, 3, 32, 32)
    before = exported(x).tokens.clone()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    torch.testing.assert_close(exported(x).tokens, before)


def test_non_square_input_uses_resized_position_embeddings():
    anchor = build_anchor("deit3_small_patch16_224", img_size=(48, 80), embed_dim=32, depth=2, num_heads=2)
    assert anchor.pos_embed.shape[1] == 3 * 5
