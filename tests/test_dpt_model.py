"""DPT head shapes, the stitched depth model, its FLOPs table and the standalone export of one stitch."""
import pytest
import torch

import snnet_core.snnet
from projects.snnet_dpt.export import load_exported_model, save_exported_stitch
from projects.snnet_dpt.head import DPTHead
from projects.snnet_dpt.model import ModelSpec, build_model, default_out_indices, depth_flops_table, head_gflops
from snnet_core import build_flops_table

TINY_SPEC = dict(
    img_size=(64, 80), lora_rank=2, features=32, post_process_channels=(16, 32, 64, 128),
    anchor_overrides=({"embed_dim": 32, "depth": 4, "num_heads": 2}, {"embed_dim": 48, "depth": 8, "num_heads": 3}),
)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_model(ModelSpec(**TINY_SPEC)).eval()
    with torch.no_grad():  # a non-zero LoRA update, so that the export must merge it
        for layer in list(model.backbone.stitch_s2l) + list(model.backbone.stitch_l2s):
            layer.lora_up.normal_(std=0.5)
    return model


@pytest.mark.parametrize("size", [(480, 640), (416, 544)])
def test_head_output_shape_at_nyu_sizes(size):
    torch.manual_seed(0)
    head = DPTHead(48)  # default DPT sizes: post-process (96, 192, 384, 768), 256 features
    grid = (size[0] // 16, size[1] // 16)
    features = [torch.randn(1, 1 + grid[0] * grid[1], 48) for _ in range(4)]
    with torch.no_grad():
        depth = head(features, grid, 1, size)
    assert depth.shape == (1, 1, *size)
    assert depth.min() >= 1e-3


@pytest.mark.parametrize("seed", range(6))
def test_fresh_head_starts_where_the_relu_passes_gradients(seed):
    # with PyTorch's default init of the last conv, most of these seeds give a head whose every pixel is
    # clamped to min_depth (zero gradient: training never starts)
    torch.manual_seed(seed)
    head = DPTHead(48, (16, 32, 64, 128), features=32)
    features = [torch.randn(2, 1 + 4 * 5, 48) for _ in range(4)]
    depth = head(features, (4, 5), 1, (64, 80))
    assert (depth > 1e-3).all()
    depth.mean().backward()
    assert head.reassemble[0].project.weight.grad.abs().sum() > 0


def test_readout_project_uses_the_cls_token():
    torch.manual_seed(0)
    head = DPTHead(16, (8, 8, 8, 8), features=8).eval()
    features = [torch.randn(1, 1 + 2 * 3, 16) for _ in range(4)]
    changed = [f.clone() for f in features]
    for f in changed:
        f[:, 0] += 1.0
    with torch.no_grad():
        a, b = head(features, (2, 3), 1, (32, 48)), head(changed, (2, 3), 1, (32, 48))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="cls token"):
        head([f[:, 1:] for f in features], (2, 3), 0, (32, 48))


def test_every_stitch_predicts_depth_for_non_square_inputs(tiny_model):
    x = torch.randn(2, 3, 48, 64)
    outputs = []
    with torch.no_grad():
        for sid in tiny_model.backbone.space.ids:
            tiny_model.backbone.set_stitch(sid)
            depth = tiny_model(x)
            assert depth.shape == (2, 1, 48, 64) and torch.isfinite(depth).all() and depth.min() >= 1e-3
            outputs.append(depth)
    assert not torch.allclose(outputs[0], outputs[1])  # the stitches are different networks
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_model(torch.randn(1, 3, 50, 64))


def test_default_out_indices():
    assert default_out_indices(24) == (4, 11, 17, 23)
    assert default_out_indices(8) == (1, 3, 5, 7)
    assert default_out_indices(12) == (2, 5, 8, 11)
    with pytest.raises(ValueError, match="4 dense features"):
        default_out_indices(3)


def test_flops_table_adds_the_same_head_cost_to_every_stitch(tiny_model):
    table = depth_flops_table(tiny_model, (64, 80))
    backbone_only = build_flops_table(tiny_model.backbone, (64, 80), mode="features")
    head_cost = head_gflops(tiny_model.head, (64, 80), 16)
    assert head_cost > 0 and table.head_gflops == pytest.approx(head_cost)
    for sid in tiny_model.backbone.space.ids:
        assert table.gflops[sid] == pytest.approx(backbone_only.gflops[sid] + head_cost)
    head_params = sum(p.numel() for p in tiny_model.head.parameters()) / 1e6
    assert table.params_m[1] == pytest.approx(backbone_only.params_m[1] + head_params)


def test_exported_stitch_loads_and_predicts_without_the_snnet(tiny_model, tmp_path, monkeypatch):
    spec = ModelSpec(**TINY_SPEC)
    x = torch.randn(1, 3, 64, 80)
    space = tiny_model.backbone.space
    picks = {s.kind: s.id for s in space}  # one stitch of every route type
    picks["anchor_fast"] = 0
    expected = {}
    for sid in picks.values():
        tiny_model.backbone.set_stitch(sid)
        with torch.no_grad():
            expected[sid] = tiny_model(x)
        save_exported_stitch(str(tmp_path / f"stitch_{sid}.pth"), tiny_model, spec, sid)

    def no_snnet(*args, **kwargs):
        raise AssertionError("the SN-Net must not be built to load an exported stitch")

    monkeypatch.setattr(snnet_core.snnet.StitchedViT, "__init__", no_snnet)
    snnet_params = sum(p.numel() for p in tiny_model.parameters())
    for sid in picks.values():
        exported = load_exported_model(str(tmp_path / f"stitch_{sid}.pth"))
        with torch.no_grad():
            torch.testing.assert_close(exported(x), expected[sid], atol=1e-5, rtol=1e-4)
        blocks = sum(1 for n in exported.backbone.layer_names if ".blocks." in n)
        assert blocks == sum(space[sid].num_blocks())
        assert sum(p.numel() for p in exported.parameters()) < snnet_params
    with pytest.raises(RuntimeError, match="not an exported"):
        torch.save({"format": "other"}, tmp_path / "other.pth")
        load_exported_model(str(tmp_path / "other.pth"))
    with pytest.raises(FileNotFoundError):
        load_exported_model(str(tmp_path / "missing.pth"))
