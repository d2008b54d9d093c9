"""Upstream SN-Netv2 interoperability: stitch-id mapping (both ways) and checkpoint conversion."""
import argparse

import pytest
import torch
import torch.nn.functional as F

from snnet_core import StitchedViT, StitchSpace, load_snnet, save_snnet
from snnet_core.model.upstream import (
    convert_upstream_state_dict,
    load_upstream_checkpoint,
    stitch_id_from_upstream,
    upstream_stitch_id,
)
from snnet_core.io.file_claims import CheckpointClaimError
from tests.conftest import TINY_FAST, TINY_SLOW, tiny_snnet
from tests.test_core_checkpoints import deflate_bomb, torch_load_forbidden  # noqa: F401 (fixture)


# ---------------------------------------------------------------------------------------------------
# Upstream's enumeration, re-derived from its construction rules (get_stitch_configs_bidirection):
# configs carry `comb_id` (anchor per segment), `route` (per segment [begin, end], run as
# "blocks i with begin <= i <= end") and `stitch_layer_ids` (stitch_layers[comb_id[k]][id] after segment k).
def upstream_configs(ds, dl):
    ratio = dl // ds
    small_of_large = [i * ds // dl for i in range(dl)]  # nearest-neighbour resampling of range(ds) to dl
    sl = [dict(front=i, end=(i + 1) * ratio, layer=i) for i in range(ds)]
    ls = [dict(front=i, end=small_of_large[i] + 1, layer=i // ratio)
          for i in range(dl) if i < dl - 1 and (ds == dl or i % 2 == 1)]
    configs = [dict(comb_id=[0]), dict(comb_id=[1])]
    depth = {0: ds, 1: dl}
    for c in sl:
        configs.append(dict(comb_id=[0, 1], route=[[0, c["front"]], [c["end"], dl]], layers=[c["layer"]]))
    for c in ls:
        configs.append(dict(comb_id=[1, 0], route=[[0, c["front"]], [c["end"], ds]], layers=[c["layer"]]))
    for a in ls:
        for b in sl:
            if b["layer"] != ds - 1 and b["front"] >= a["end"]:
                configs.append(dict(comb_id=[1, 0, 1], route=[[0, a["front"]], [a["end"], b["front"]], [b["end"], dl]],
                                    layers=[a["layer"], b["layer"]]))
    for a in sl:
        for b in ls:
            if b["front"] >= a["end"]:
                configs.append(dict(comb_id=[0, 1, 0], route=[[0, a["front"]], [a["end"], b["front"]], [b["end"], ds]],
                                    layers=[a["layer"], b["layer"]]))
    for c in configs:
        if len(c["comb_id"]) == 1:
            c["route"], c["layers"] = [[0, depth[c["comb_id"][0]]]], []
        c["blocks"] = [(m, [i for i in range(depth[m]) if lo <= i <= hi])
                       for m, (lo, hi) in zip(c["comb_id"], c["route"])]
    return configs


def upstream_signature(config):
    """What a config runs: (anchor, blocks) per segment and (direction, stitching layer) per link."""
    return (tuple((m, tuple(b)) for m, b in config["blocks"]),
            tuple(("s2l" if m == 0 else "l2s", layer) for m, layer in zip(config["comb_id"], config["layers"])))


def our_signature(stitch):
    return (tuple((s.anchor, tuple(range(s.start, s.end))) for s in stitch.segments),
            tuple((link.direction, link.position) for link in stitch.links))


def dead_config(config, ds):
    """Upstream's FS config through the last small block: runs no large block, never trained or evaluated."""
    return config["comb_id"] == [0, 1] and config["route"][0][1] == ds - 1


@pytest.mark.parametrize("depths", [(4, 8), (12, 24), (12, 12)])
def test_id_mapping_matches_upstream_enumeration_route_by_route(depths):
    space = StitchSpace(*depths)
    configs = upstream_configs(*depths)
    ours = {our_signature(s): s.id for s in space}
    live = [u for u, c in enumerate(configs) if not dead_config(c, depths[0])]
    assert len(live) == len(space) and len(configs) == len(space) + 1
    for u in live:
        sid = ours[upstream_signature(configs[u])]
        assert upstream_stitch_id(space, sid) == u
        assert stitch_id_from_upstream(space, u) == sid
    for sid in space.ids:
        assert stitch_id_from_upstream(space, upstream_stitch_id(space, sid)) == sid


def test_id_mapping_12_24_blocks():
    space = StitchSpace(12, 24)
    upstream = {kind: sorted(upstream_stitch_id(space, s.id) for s in space if s.kind == kind)
                for kind in ("anchor", "FS", "SF", "SFS", "FSF")}
    assert upstream == {"anchor": [0, 1], "FS": list(range(2, 13)), "SF": list(range(14, 25)),
                        "SFS": list(range(25, 80)), "FSF": list(range(80, 135))}
    assert [sid for sid in space.ids if upstream_stitch_id(space, sid) == sid] == list(range(13))
    with pytest.raises(KeyError, match="upstream stitch id 13 is upstream's unused FS config"):
        stitch_id_from_upstream(space, 13)


def test_id_mapping_errors():
    space = StitchSpace(12, 24)
    with pytest.raises(KeyError, match="unknown upstream stitch id 135.*0..134"):
        stitch_id_from_upstream(space, 135)
    with pytest.raises(KeyError, match="unknown stitch id 134"):
        upstream_stitch_id(space, 134)
    fs_only = StitchSpace(12, 24, route_types=("anchor", "FS"))
    with pytest.raises(KeyError, match="upstream stitch id 30 is our SFS stitch .* outside this space"):
        stitch_id_from_upstream(fs_only, 30)
    assert stitch_id_from_upstream(fs_only, 5) == 5
    with pytest.raises(ValueError, match="4/12 blocks does not match"):
        upstream_stitch_id(StitchSpace(4, 12), 0)


# ---------------------------------------------------------------------------------------------------
# Checkpoint conversion. The test writes a checkpoint in upstream's key layout with random weights and
# runs it through a re-implementation of upstream's SNNetv2 forward (depth code: mmseg DeiT3 layers).
PATCH = 16
FAST_CFG = dict(dim=TINY_FAST["embed_dim"], depth=TINY_FAST["depth"], heads=TINY_FAST["num_heads"])
SLOW_CFG = dict(dim=TINY_SLOW["embed_dim"], depth=TINY_SLOW["depth"], heads=TINY_SLOW["num_heads"])
OUT_INDICES = (1, 3, 5, 7)  # the slow anchor's
RANK = 4
NET_SIZE, CKPT_GRID = 48, 4  # the net runs a 3x3 grid; upstream's anchors were built for 64 px (4x4)


def upstream_state(seed=0, rank=RANK, grid=CKPT_GRID):
    """An SNNetv2 backbone state dict in the depth code's layout (keys without the 'backbone.' prefix)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    state = {}
    for a, cfg in enumerate((FAST_CFG, SLOW_CFG)):
        c, p = cfg["dim"], f"anchors.{a}."
        state[p + "patch_embed.projection.weight"] = rand(c, 3, PATCH, PATCH, std=0.02)
        state[p + "patch_embed.projection.bias"] = rand(c, std=0.1)
        state[p + "cls_token"] = rand(1, 1, c)
        state[p + "pos_embed"] = rand(1, grid * grid, c)
        for i in range(cfg["depth"]):
            q = f"{p}layers.{i}."
            for norm in ("ln1", "ln2"):
                state[q + norm + ".weight"], state[q + norm + ".bias"] = rand(c, std=0.1, mean=1.0), rand(c, std=0.1)
            for name, (out_dim, in_dim) in {"attn.qkv": (3 * c, c), "attn.proj": (c, c),
                                            "ffn.layers.0.0": (4 * c, c), "ffn.layers.1": (c, 4 * c)}.items():
                state[q + name + ".weight"] = rand(out_dim, in_dim, std=in_dim ** -0.5)
                state[q + name + ".bias"] = rand(out_dim, std=0.1)
            state[q + "gamma_1"], state[q + "gamma_2"] = rand(c, std=0.1, mean=0.5), rand(c, std=0.1, mean=0.5)
    dims = (FAST_CFG["dim"], SLOW_CFG["dim"])
    for group, (d_in, d_out, count) in enumerate([(dims[0], dims[1], FAST_CFG["depth"]),
                                                   (dims[1], dims[0], FAST_CFG["depth"] - 1)]):
        for k in range(count):
            q = f"stitch_layers.{group}.{k}.transform."
            state[q + "weight"], state[q + "bias"] = rand(d_out, d_in, std=d_in ** -0.5), rand(d_out, std=0.1)
            if rank:
                state[q + "lora_A"], state[q + "lora_B"] = rand(rank, d_in, std=d_in ** -0.5), rand(d_out, rank)
    return state


def mmcv_checkpoint(state):
    """What mmcv's CheckpointHook writes for upstream's DepthEncoderDecoder."""
    model = {f"backbone.{k}": v for k, v in state.items()}
    model["decode_head.conv_depth.weight"] = torch.zeros(1, 8, 3, 3)
    return {"state_dict": model, "meta": {"epoch": 3, "iter": 1200, "mmcv_version": "1.7.0", "CLASSES": None}}


def reference_forward(state, config, images, mmcv_ffn=True, eps=1e-5):
    """Upstream SNNetv2.forward for one config on ``state``: (dense features at the slow width, final tokens).

    ``mmcv_ffn``/``eps``: upstream's layer math (mmcv FFN adds its input; nn.LayerNorm default eps). With
    ``mmcv_ffn=False, eps=1e-6`` it is the standard DeiT3 layer instead.
    """
    ds, dl = FAST_CFG["depth"], SLOW_CFG["depth"]
    cfgs = (FAST_CFG, SLOW_CFG)
    out_indices = {1: list(OUT_INDICES), 0: [i * ds // dl for i in OUT_INDICES]}  # upstream's reset_out_indices

    def stitch(group, k, x):  # lora.Linear (r > 0, not merged): W x + b + (x A^T B^T) * lora_alpha / r
        p = f"stitch_layers.{group}.{k}.transform."
        y = F.linear(x, state[p + "weight"], state[p + "bias"])
        if p + "lora_A" in state:
            y = y + (x @ state[p + "lora_A"].T @ state[p + "lora_B"].T) * (1.0 / state[p + "lora_A"].shape[0])
        return y

    def layer(a, i, x):
        p, c, h = f"anchors.{a}.layers.{i}.", cfgs[a]["dim"], cfgs[a]["heads"]
        b, n, _ = x.shape
        y = F.layer_norm(x, (c,), state[p + "ln1.weight"], state[p + "ln1.bias"], eps)
        q, k, v = F.linear(y, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"]).reshape(
            b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        attn = ((q * (c // h) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        y = F.linear((attn @ v).transpose(1, 2).reshape(b, n, c), state[p + "attn.proj.weight"],
                     state[p + "attn.proj.bias"])
        x = x + state[p + "gamma_1"] * y
        y = F.layer_norm(x, (c,), state[p + "ln2.weight"], state[p + "ln2.bias"], eps)
        ffn = F.linear(F.gelu(F.linear(y, state[p + "ffn.layers.0.0.weight"], state[p + "ffn.layers.0.0.bias"])),
                       state[p + "ffn.layers.1.weight"], state[p + "ffn.layers.1.bias"])
        return x + state[p + "gamma_2"] * ((y + ffn) if mmcv_ffn else ffn)

    def embed(a, images):
        p = f"anchors.{a}."
        x = F.conv2d(images, state[p + "patch_embed.projection.weight"], state[p + "patch_embed.projection.bias"],
                     stride=PATCH)
        hw = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        pos = state[p + "pos_embed"]
        if pos.shape[1] != x.shape[1]:  # DeiT3._pos_embeding: resize from the training grid, bicubic
            side = int(pos.shape[1] ** 0.5)
            pos = F.interpolate(pos.reshape(1, side, side, -1).permute(0, 3, 1, 2), size=hw, mode="bicubic",
                                align_corners=False).flatten(2).transpose(1, 2)
        return torch.cat([state[p + "cls_token"].expand(len(x), -1, -1), x + pos], dim=1)

    x = embed(config["comb_id"][0], images)
    features = []
    for seg, (a, blocks) in enumerate(config["blocks"]):
        for i in blocks:
            x = layer(a, i, x)
            if i in out_indices[a]:
                features.append(x if a == 1 else stitch(0, i, x))
        if seg < len(config["layers"]):
            x = stitch(a, config["layers"][seg], x)
    return features, x


def target_net(**kwargs):
    kwargs = {"lora_rank": RANK, "lora_alpha": 1.0, **kwargs}
    return tiny_snnet(out_indices=OUT_INDICES, img_size=NET_SIZE, seed=1, **kwargs).eval()


def assert_net_matches_reference(net, state, images, **reference_math):
    ds, dl = net.space.depths
    configs = upstream_configs(ds, dl)
    with torch.no_grad():
        for sid in net.space.ids:
            out = net(images, stitch_id=sid)
            features, tokens = reference_forward(state, configs[upstream_stitch_id(net.space, sid)], images,
                                                 **reference_math)
            assert len(out.features) == len(features) == len(OUT_INDICES)
            for ours, ref in zip(out.features, features):
                torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"stitch {sid}: {m}")
            torch.testing.assert_close(out.tokens, tokens, rtol=1e-5, atol=1e-5, msg=lambda m: f"stitch {sid}: {m}")


def test_upstream_checkpoint_reproduces_upstream_forward_for_every_stitch(tmp_path):
    state = upstream_state()
    path = str(tmp_path / "iter_1200.pth")
    torch.save(mmcv_checkpoint(state), path)
    net = target_net()
    report = load_upstream_checkpoint(path, net)
    assert report.layout == "mmseg"
    assert report.set_aside == ["meta", "decode_head.conv_depth.weight"]
    assert report.resized == {f"anchors.{a}.pos_embed": ((CKPT_GRID, CKPT_GRID), (3, 3)) for a in (0, 1)}
    assert sorted(report.kept) == sorted(f"anchors.{a}.norm.{p}" for a in (0, 1) for p in ("weight", "bias"))
    images = torch.randn(2, 3, NET_SIZE, NET_SIZE, generator=torch.Generator().manual_seed(3))
    assert_net_matches_reference(net, state, images)
    # the switch is part of the architecture: saved with the net, and a standard-layer net refuses the file
    assert net.config()["upstream_layers"] is True
    save_snnet(str(tmp_path / "converted.pth"), net)
    rebuilt = target_net()
    with pytest.raises(RuntimeError, match="upstream_layers: checkpoint True vs model False"):
        load_snnet(str(tmp_path / "converted.pth"), rebuilt)
    rebuilt.use_upstream_layers()
    load_snnet(str(tmp_path / "converted.pth"), rebuilt)
    assert_net_matches_reference(rebuilt, state, images)


def test_converted_weights_run_the_standard_deit3_layer_without_upstream_layers(tmp_path):
    """Weights alone (no switch to upstream's layer math) equal the reference with standard DeiT3 layers;
    upstream's own layer math gives different outputs, so the switch is what reproduces upstream."""
    state = upstream_state()
    path = str(tmp_path / "iter_1200.pth")
    torch.save(mmcv_checkpoint(state), path)
    net = target_net()
    load_upstream_checkpoint(path, net, upstream_layers=False)
    images = torch.randn(2, 3, NET_SIZE, NET_SIZE, generator=torch.Generator().manual_seed(3))
    assert_net_matches_reference(net, state, images, mmcv_ffn=False, eps=1e-6)
    with pytest.raises(AssertionError):
        assert_net_matches_reference(net, state, images)


def test_classification_layout_converts_to_the_same_weights(tmp_path):
    """The classification code's checkpoints ({'model', 'args', ...}; DeiT III names) map to the same net."""
    state = upstream_state()
    renames = [("patch_embed.projection.", "patch_embed.proj."), (".ffn.layers.0.0.", ".mlp.fc1."),
               (".ffn.layers.1.", ".mlp.fc2."), (".layers.", ".blocks."), (".ln1.", ".norm1."), (".ln2.", ".norm2.")]
    classification = {}
    for key, value in state.items():
        if key.startswith("anchors."):
            for old, new in renames:
                key = key.replace(old, new)
        classification[key] = value
    for a, cfg in enumerate((FAST_CFG, SLOW_CFG)):
        classification[f"anchors.{a}.norm.weight"] = torch.full((cfg["dim"],), 2.0)
        classification[f"anchors.{a}.norm.bias"] = torch.zeros(cfg["dim"])
        classification[f"anchors.{a}.head.weight"] = torch.zeros(1000, cfg["dim"])
    path = str(tmp_path / "checkpoint.pth")
    torch.save({"model": classification, "epoch": 49, "args": argparse.Namespace(lora_r=RANK, lr=3e-5)}, path)
    net = target_net()
    report = load_upstream_checkpoint(path, net)
    assert report.layout == "deit3" and report.kept == []
    assert set(report.set_aside) == {"epoch", "args", "anchors.0.head.weight", "anchors.1.head.weight"}
    reference, _ = convert_upstream_state_dict(state, target_net())
    loaded = net.state_dict()
    for key, value in reference.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    assert float(loaded["anchors.1.norm.weight"][0]) == 2.0
    assert type(net.anchors[0].blocks[0].mlp).__name__ == "Mlp"  # DeiT III layers are timm's


def test_conversion_errors(tmp_path):
    state = upstream_state()
    path = str(tmp_path / "ckpt.pth")
    torch.save(mmcv_checkpoint(state), path)
    with pytest.raises(ValueError, match=f"ckpt.pth.*LoRA rank {RANK}.*lora_rank=2"):
        load_upstream_checkpoint(path, target_net(lora_rank=2))
    with pytest.raises(ValueError, match="scaling lora_alpha / r = 1/4.*scale by 1.*lora_alpha=1"):
        load_upstream_checkpoint(path, target_net(lora_alpha=4.0))
    broken = dict(state)
    del broken["anchors.1.layers.3.ln2.weight"]
    broken["anchors.0.layers.0.attn.extra"] = torch.zeros(1)
    torch.save(mmcv_checkpoint(broken), path)
    with pytest.raises(ValueError, match=r"ckpt.pth.*missing.*anchors\.1\.blocks\.3\.norm2\.weight.*"
                                         r"unknown keys: anchors\.0\.layers\.0\.attn\.extra"):
        load_upstream_checkpoint(path, target_net())
    narrow = dict(state, **{"stitch_layers.1.0.transform.bias": torch.zeros(5)})
    with pytest.raises(ValueError, match=r"shape mismatch: stitch_layers\.1\.0\.transform\.bias \(5,\)"):
        convert_upstream_state_dict(narrow, target_net())
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(RuntimeError, match="could not read upstream checkpoint .*notes.pth"):
        load_upstream_checkpoint(str(text), target_net())
    torch.save({"state_dict": {"backbone.fc.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="ckpt.pth.* holds no upstream anchor blocks"):
        load_upstream_checkpoint(path, target_net())
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_upstream_checkpoint(str(tmp_path / "missing.pth"), target_net())


def test_a_compressed_upstream_checkpoint_claiming_far_more_than_the_net_is_refused_before_reading(
        tmp_path, torch_load_forbidden):
    path = tmp_path / "ckpt.pth"
    torch.save(mmcv_checkpoint(upstream_state()), path)
    bomb = deflate_bomb(path, tmp_path / "bomb.pth")
    with pytest.raises(CheckpointClaimError, match=r"upstream checkpoint '.*bomb.pth' claims 6[45] MiB of data"):
        load_upstream_checkpoint(str(bomb), target_net())
    with pytest.raises(IsADirectoryError, match=r"upstream checkpoint '.*' is a directory.*give a file in it, e.g. "
                                                r"'.*bomb.pth'"):
        load_upstream_checkpoint(str(tmp_path), target_net())


def test_stitch_table_has_upstream_ids(tmp_path):
    """``python -m snnet_core.stitch_table``: an ``upstream_id`` column, rows sortable in upstream's order."""
    import csv
    import json

    from snnet_core import stitch_table

    out = tmp_path / "table"
    stitch_table.main(["--anchors", "deit3_small_patch16_224", "deit3_small_patch16_224", "--img-size", "32",
                       "--mode", "features", "--sort", "upstream_id", "--output-dir", str(out)])
    rows = json.loads((out / "stitches.json").read_text())["stitches"]
    space = StitchSpace(12, 12)
    assert [r["upstream_id"] for r in rows] == sorted(upstream_stitch_id(space, sid) for sid in space.ids)
    assert all(r["upstream_id"] == upstream_stitch_id(space, r["id"]) for r in rows)
    assert 13 not in [r["upstream_id"] for r in rows]  # upstream's dead FS config
    with open(out / "stitches.csv", newline="") as f:
        assert [int(r["upstream_id"]) for r in csv.DictReader(f)] == [r["upstream_id"] for r in rows]


def test_stitch_table_upstream_id_is_empty_where_upstream_has_no_enumeration():
    from snnet_core import build_flops_table
    from snnet_core.stitch_table import stitch_rows
    from tests.conftest import tiny_anchor

    net = StitchedViT(tiny_anchor(**TINY_FAST), tiny_anchor(**dict(TINY_SLOW, depth=12)))  # 4/12 blocks
    rows = stitch_rows(net, build_flops_table(net, (32, 32)), flops_step=0.001, sort="upstream_id")
    assert len(rows) == len(net.space) and all(r["upstream_id"] is None for r in rows)
