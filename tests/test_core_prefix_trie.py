"""run_stitches: every stitch's outputs equal its own forward while each shared route prefix runs once."""
from collections import Counter

import pytest
import torch

from snnet_core import StitchedViT, build_anchor
from snnet_core.evaluation.prefix_trie import build_trie, classify_stitches, prefix_sharing_cost, run_stitches
from snnet_core.model.route import embed_images
from tests.conftest import tiny_anchor, tiny_snnet


def trained_like(net: StitchedViT) -> StitchedViT:
    """Non-zero LoRA updates and LayerScale 1, so that every stitching layer and block changes the outputs."""
    with torch.no_grad():
        for layer in list(net.stitch_s2l) + list(net.stitch_l2s):
            layer.lora_up.normal_()
        for name, p in net.named_parameters():
            if name.endswith(".gamma"):
                p.fill_(1.0)
    return net


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_every_stitch_equals_its_own_forward_bit_for_bit(mode):
    net = trained_like(tiny_snnet(num_classes=5))
    net.train(mode == "train")  # drop path 0: train mode is deterministic too
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        shared = list(run_stitches(net, x))
        assert sorted(sid for sid, _ in shared) == net.space.ids  # each stitch once
        for sid, out in shared:
            ref = net(x, sid)
            assert out.grid == ref.grid and out.num_prefix_tokens == ref.num_prefix_tokens
            torch.testing.assert_close(out.tokens, ref.tokens, rtol=0, atol=0)
            assert len(out.features) == len(ref.features) == 4
            for a, b in zip(out.features, ref.features):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        for sid, logits in classify_stitches(net, x):
            torch.testing.assert_close(logits, net.classify(x, sid), rtol=0, atol=0)
        tokens_only = dict(run_stitches(net, x, [3, 11], with_features=False))
        assert sorted(tokens_only) == [3, 11] and tokens_only[3].features == []
        torch.testing.assert_close(tokens_only[11].tokens, net(x, 11).tokens, rtol=0, atol=0)


@pytest.mark.parametrize("window", [(2, 1), (3, 3)])
def test_three_anchor_window_stitches_equal_their_own_forward(window):
    """SN-Netv1's sliding-window space: routes that re-run a stage's block or jump over it read their dense features
    after other steps than the routes they share a prefix with; each still equals its own forward."""
    torch.manual_seed(0)
    anchors = [tiny_anchor(embed_dim=d, depth=4, num_heads=2, num_classes=5) for d in (16, 32, 48)]
    net = trained_like(StitchedViT(*anchors, lora_rank=2, out_indices=(1, 3), window=window)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        shared = dict(run_stitches(net, x))
        assert sorted(shared) == net.space.ids
        for sid, out in shared.items():
            ref = net(x, sid)
            torch.testing.assert_close(out.tokens, ref.tokens, rtol=0, atol=0)
            for a, b in zip(out.features, ref.features, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert {node.name for node in build_trie(net, net.space.ids).children.values()} == {
        "anchors.0.embed", "anchors.1.embed", "anchors.2.embed"}


def test_each_trie_node_runs_once_per_batch():
    net = trained_like(tiny_snnet()).eval()
    calls = Counter()
    for name, module in net.named_modules():
        if ".blocks." in name and name.count(".") == 3:  # anchors.A.blocks.i
            module.register_forward_hook(lambda m, i, o, name=name: calls.update([name]))
    for a, anchor in enumerate(net.anchors):
        anchor.patch_embed.register_forward_hook(lambda m, i, o, a=a: calls.update([f"embed {a}"]))
    with torch.no_grad():
        list(run_stitches(net, torch.randn(1, 3, 32, 32)))

    def names(node):
        for child in node.children.values():
            yield child.name
            yield from names(child)

    block_nodes = sum(1 for name in names(build_trie(net, net.space.ids)) if ".blocks." in name)
    block_calls = sum(v for k, v in calls.items() if ".blocks." in k)
    naive = sum(sum(net.space[sid].num_blocks()) for sid in net.space.ids)
    assert calls["embed 0"] == calls["embed 1"] == 1
    assert block_calls == block_nodes < 0.6 * naive


def test_subsets_duplicates_and_unknown_ids():
    net = tiny_snnet().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert [sid for sid, _ in run_stitches(net, x, [1])] == [1]
        with pytest.raises(ValueError, match="distinct"):
            list(run_stitches(net, x, [2, 2]))
        with pytest.raises(KeyError, match="unknown stitch id 99"):
            list(run_stitches(net, x, [0, 99]))


def test_deit3_s_l_shared_prefix_backbone_cost_is_about_a_third():
    """The issue's count: DeiT3-S/L block costs (0.38 / 2.57 GFLOPs at 224) over the trie of the 134 routes."""
    fast = build_anchor("deit3_small_patch16_224", depth=12, embed_dim=32, num_heads=2)  # the 12/24 structure
    slow = build_anchor("deit3_small_patch16_224", depth=24, embed_dim=48, num_heads=3)
    net = StitchedViT(fast, slow, out_indices=(4, 11, 17, 23))
    block = {"anchors.0.blocks": 0.38, "anchors.1.blocks": 2.57}
    shared, naive = prefix_sharing_cost(net, lambda name: block.get(name.rsplit(".", 1)[0], 0.0))
    assert naive == pytest.approx(sum(0.38 * s.num_blocks()[0] + 2.57 * s.num_blocks()[1] for s in net.space))
    assert shared / naive == pytest.approx(0.3706, abs=1e-3)


def test_stitch_groups_cut_the_trie_order():
    net = tiny_snnet().eval()
    from snnet_core.evaluation.prefix_trie import stitch_groups

    groups = stitch_groups(net, net.space.ids, 4)
    assert [len(g) for g in groups] == [4, 4, 4, 2]
    with torch.no_grad():
        trie_order = [sid for sid, _ in run_stitches(net, torch.zeros(1, 3, 32, 32), with_features=False)]
    assert [sid for g in groups for sid in g] == trie_order
    with pytest.raises(ValueError, match="group size must be >= 1"):
        stitch_groups(net, net.space.ids, 0)


def test_route_step_gflops_counts_each_kind_of_step_once(monkeypatch):
    import snnet_core.evaluation.prefix_trie as prefix_trie
    from snnet_core import count_gflops
    from snnet_core.evaluation.prefix_trie import route_step_gflops

    net = tiny_snnet().eval()
    x = torch.zeros(1, 3, 48, 32)
    tokens = [embed_images(anchor, x)[0] for anchor in net.anchors]
    counted = []
    monkeypatch.setattr(prefix_trie, "count_gflops", lambda m, i: counted.append(m) or count_gflops(m, i))
    cost = route_step_gflops(net, (48, 32), block_kind=lambda anchor, index: index % 2)
    assert cost("anchors.1.embed") == count_gflops(net.anchors[1].patch_embed, (x,))
    assert cost("stitch_l2s.2") == count_gflops(net.stitch_l2s[0].merged(), (tokens[1],))  # 4/8 blocks: l2s 0..2
    assert cost("anchors.0.blocks.2") == count_gflops(net.anchors[0].blocks[2], (tokens[0],)) > 0
    before = len(counted)
    cost("anchors.0.blocks.0"), cost("anchors.0.blocks.3"), cost("anchors.0.blocks.1")
    assert len(counted) == before + 1  # blocks 0 and 2 share a kind; 1 and 3 are counted once

