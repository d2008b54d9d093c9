"""Backbone LoRA (SN-Netv2 Fig. 12a): rank-r factors on the anchors' attention/MLP linears, anchors frozen, merged
for export with the FLOPs and parameter tables of the deployed (merged) form, checkpoints that keep the factors."""
import pytest
import torch
import torch.nn as nn

from snnet_core import StitchedViT, build_anchor, build_flops_table, count_gflops, export_stitch, load_snnet, save_snnet
from snnet_core.model.backbone_lora import (LoRALinear, add_backbone_lora, deployed_numel, describe_backbone_lora,
                                           parameter_counts)
from snnet_core.model.checkpoint import architecture

from .conftest import TINY_FAST, TINY_SLOW, tiny_anchor, tiny_snnet

RANK = 2
LAYER_SCALE = dict(init_values=0.5)  # DeiT3's 1e-6 LayerScale would hide what the blocks' linears do


def lora_snnet(rank=RANK, seed=0):
    return tiny_snnet(seed=seed, backbone_lora_rank=rank, anchor_kwargs=LAYER_SCALE)


def randomize_lora(net):
    """Give every backbone LoRA update a non-zero ``B`` (as after training)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, LoRALinear):
                module.lora_up.normal_(0, 0.5)


def test_factors_only_on_attention_and_mlp_linears_of_every_block():
    plain, net = tiny_snnet(anchor_kwargs=LAYER_SCALE), lora_snnet()
    old, new = dict(plain.named_parameters()), dict(net.named_parameters())
    assert set(old) <= set(new)  # every pretrained weight keeps its name (checkpoints still load)
    added = sorted(set(new) - set(old))
    expected = []
    for a, spec in enumerate((TINY_FAST, TINY_SLOW)):
        for b in range(spec["depth"]):
            for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                expected += [f"anchors.{a}.blocks.{b}.{layer}.{f}" for f in ("lora_down", "lora_up")]
    assert added == sorted(expected)
    for name in added:
        layer = net.get_submodule(name.rsplit(".", 1)[0])
        shape = (RANK, layer.in_features) if name.endswith("lora_down") else (layer.out_features, RANK)
        assert new[name].shape == shape
    linears = [m for m in net.anchors.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, LoRALinear) for m in linears)  # no other linear layer in a DeiT3 backbone
    assert net.config()["backbone_lora_rank"] == RANK and plain.config()["backbone_lora_rank"] == 0


def test_anchors_frozen_and_outputs_unchanged_at_start():
    plain, net = tiny_snnet(anchor_kwargs=LAYER_SCALE).eval(), lora_snnet().eval()
    images = torch.randn(2, 3, 32, 32)
    for sid in (0, 1, 5):
        torch.testing.assert_close(net(images, stitch_id=sid).tokens, plain(images, stitch_id=sid).tokens,
                                   rtol=0, atol=0)  # B = 0: the pretrained anchors
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    anchor_trainable = {n for n in trainable if n.startswith("anchors.")}
    assert anchor_trainable and all(n.endswith(("lora_down", "lora_up")) for n in anchor_trainable)
    assert {n for n in trainable if n.startswith("stitch_")} == {
        n for n, p in plain.named_parameters() if p.requires_grad and n.startswith("stitch_")}
    lora_params = sum(p.numel() for n, p in net.named_parameters() if n.startswith("anchors.") and p.requires_grad)
    assert lora_params == sum(RANK * (m.in_features + m.out_features) for m in net.modules()
                              if isinstance(m, LoRALinear))
    trainable_count, total = parameter_counts(net)
    assert total == sum(p.numel() for p in plain.parameters()) + lora_params
    assert trainable_count == lora_params + sum(p.numel() for n, p in plain.named_parameters()
                                                if p.requires_grad and n.startswith("stitch_"))


def test_one_step_trains_only_lora_and_stitching_layers():
    net = lora_snnet().train()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net(torch.randn(2, 3, 32, 32), stitch_id=5).tokens.pow(2).mean().backward()
    optimizer.step()
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("anchors.") and n.endswith("lora_up") for n in changed)
    assert all(n.endswith(("lora_down", "lora_up")) for n in changed if n.startswith("anchors."))


def test_classifier_head_stays_trainable():
    anchor = tiny_anchor(num_classes=5, **LAYER_SCALE)
    add_backbone_lora(anchor, RANK)
    assert {n for n, p in anchor.named_parameters() if p.requires_grad and not n.endswith(("lora_down", "lora_up"))} \
        == {"head.weight", "head.bias"}


def test_export_merges_into_plain_linears_with_the_same_outputs():
    net = lora_snnet().eval()
    randomize_lora(net)
    images = torch.randn(2, 3, 32, 32)
    for sid in net.space.ids:  # every route type
        exported = export_stitch(net, sid)
        assert not any(isinstance(m, LoRALinear) for m in exported.modules())
        assert all(type(m) is nn.Linear for m in exported.modules() if isinstance(m, nn.Linear))
        assert not any(n.endswith(("lora_down", "lora_up")) for n, _ in exported.layers.named_parameters())
        ref, out = net(images, stitch_id=sid), exported(images)
        torch.testing.assert_close(out.tokens, ref.tokens, rtol=1e-4, atol=1e-5)
        for a, b in zip(out.features, ref.features):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert any(isinstance(m, LoRALinear) for m in net.modules())  # the SN-Net keeps its factors
    plain = tiny_snnet(anchor_kwargs=LAYER_SCALE).eval()
    assert not torch.allclose(net(images, stitch_id=5).tokens, plain(images, stitch_id=5).tokens, atol=1e-3)


def test_flops_and_params_are_those_of_the_merged_stitch():
    net, plain = lora_snnet().eval(), tiny_snnet(anchor_kwargs=LAYER_SCALE).eval()
    randomize_lora(net)
    table, plain_table = build_flops_table(net, (32, 32)), build_flops_table(plain, (32, 32))
    assert table.gflops == plain_table.gflops and table.params_m == plain_table.params_m
    images = torch.zeros(1, 3, 32, 32)
    for sid in (0, 1, 5):
        exported = export_stitch(net, sid).eval()
        assert table.gflops[sid] == pytest.approx(count_gflops(_Features(exported), (images,)), rel=1e-9)
        # counted on the merged form: the SN-Net's own route also runs the factors' products
        assert count_gflops(_Features(net, sid), (images,)) > table.gflops[sid] * 1.01
        embed = [p for n, p in exported.embed_anchor.named_parameters() if not n.startswith(("norm.", "head."))]
        deployed = {id(p): p for p in [*embed, *exported.layers.parameters(), *exported.projections.parameters()]}
        assert table.params_m[sid] == pytest.approx(sum(p.numel() for p in deployed.values()) / 1e6, abs=1e-9)
        assert deployed_numel(exported) == sum(p.numel() for p in exported.parameters())  # no factor left
    assert any(isinstance(m, LoRALinear) for m in net.modules())  # counting put the LoRA layers back


class _Features(nn.Module):
    """Dense features of an exported stitch, or of stitch ``sid`` of an SN-Net, as a tuple fvcore can trace."""

    def __init__(self, model, sid=None):
        super().__init__()
        self.model, self.sid = model, sid

    def forward(self, images):
        out = self.model(images) if self.sid is None else self.model(images, stitch_id=self.sid)
        return (out.tokens, *out.features)


def test_checkpoint_round_trip_keeps_factors_and_freezing(tmp_path):
    net = lora_snnet().eval()
    randomize_lora(net)
    path = str(tmp_path / "model.pth")
    save_snnet(path, net)
    loaded = load_snnet(path)
    assert loaded.backbone_lora_rank == RANK
    for (name, p), (_, q) in zip(net.named_parameters(), loaded.named_parameters()):
        assert torch.equal(p, q) and p.requires_grad == q.requires_grad, name
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(images, stitch_id=5).tokens, net(images, stitch_id=5).tokens, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="backbone_lora_rank: checkpoint 2 vs model 0"):
        load_snnet(path, tiny_snnet(anchor_kwargs=LAYER_SCALE))


def test_checkpoint_from_before_the_key_loads_as_rank_0():
    config = tiny_snnet().config()
    del config["backbone_lora_rank"]
    assert architecture(config) == architecture(tiny_snnet().config())


def test_block_without_timm_attention_is_refused_naming_it():
    anchor = tiny_anchor()
    anchor.blocks[1].attn = nn.Identity()
    with pytest.raises(ValueError, match=r"block 1 of this VisionTransformer has \['fc1', 'fc2'\] \(Block; "):
        add_backbone_lora(anchor, RANK)
    beit = build_anchor("beitv2_base_patch16_224", img_size=32, embed_dim=32, depth=2, num_heads=2)
    with pytest.raises(ValueError, match=r"block 0 of this Beit has \['fc1', 'fc2'\] .*as BEiT's does"):
        add_backbone_lora(beit, RANK)  # its attention reads qkv.weight: a LoRA there would be skipped silently
    with pytest.raises(ValueError, match="rank must be >= 1"):
        add_backbone_lora(tiny_anchor(), -1)


def test_training_log_line_names_the_key_and_the_trainable_share():
    net = lora_snnet()
    trainable, total = parameter_counts(net)
    assert describe_backbone_lora(net, RANK, "snnet.backbone_lora_rank") == (
        f"backbone LoRA rank {RANK} (snnet.backbone_lora_rank={RANK}): the anchors are frozen but for the LoRA "
        f"factors; trainable parameters {trainable / 1e6:.3f} M of {total / 1e6:.3f} M")
    assert describe_backbone_lora(tiny_snnet(), 0, "model.backbone_lora_rank").startswith(
        "backbone LoRA off (model.backbone_lora_rank=0): the anchors train in full; trainable parameters")


@pytest.mark.parametrize("name, img_size, kwargs", [
    ("vit_small_patch14_reg4_dinov2", 28, dict(init_values=0.5)),  # DINOv2: patch 14, register tokens, LayerScale
    ("samvit_base_patch16", 64, dict(class_token=False, window_size=2, global_attn_indexes=(1, 3))),  # SAM blocks
])
def test_other_families_take_backbone_lora_and_export_merged(name, img_size, kwargs):
    torch.manual_seed(0)
    anchors = [build_anchor(name, img_size=img_size, **spec, **kwargs) for spec in (TINY_FAST, TINY_SLOW)]
    net = StitchedViT(*anchors, out_indices=(1, 3, 5, 7), backbone_lora_rank=RANK).eval()
    assert sum(isinstance(m, LoRALinear) for m in net.modules()) == 4 * (TINY_FAST["depth"] + TINY_SLOW["depth"])
    randomize_lora(net)
    images = torch.randn(1, 3, img_size, img_size)
    for sid in (0, 1, 5):
        exported = export_stitch(net, sid)
        assert not any(isinstance(m, LoRALinear) for m in exported.modules())
        for a, b in zip(exported(images).features, net(images, stitch_id=sid).features):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
