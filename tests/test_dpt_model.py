"""DPT head shapes, the stitched depth model, its FLOPs table and the standalone export of one stitch."""
import os
from typing import List, Optional, Sequence, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import snnet_core.model.snnet
from projects.snnet_dpt import train as train_cli
from projects.snnet_dpt.export import load_exported_model, save_exported_stitch
from projects.snnet_dpt.head import DPTHead
from projects.snnet_dpt.model import ModelSpec, build_model, default_out_indices, depth_flops_table, head_gflops
from snnet_core import build_flops_table, count_gflops
from snnet_core.model.upstream import upstream_stitch_id

DPT_CONFIGS = os.path.join(os.path.dirname(__file__), "..", "projects", "snnet_dpt", "configs")
TINY_SPEC = dict(
    pos_embed_size=(64, 80), lora_rank=2, features=32, post_process_channels=(16, 32, 64, 128),
    anchor_overrides=({"embed_dim": 32, "depth": 4, "num_heads": 2}, {"embed_dim": 48, "depth": 8, "num_heads": 3}),
)


class ToolboxResidualConvUnit(nn.Module):
    """The toolbox's ``PreActResidualConvUnit`` (ConvModules ordered act, conv; ``bias=False``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ToolboxFusionBlock(nn.Module):
    """The toolbox's ``FeatureFusionBlock`` (the branch that resizes a skip of another size, taken only on
    grids with an odd side, is left out: the grids here are even)."""

    def __init__(self, channels: int):
        super().__init__()
        self.project = nn.Conv2d(channels, channels, 1)  # ConvModule, no norm: bias
        self.res_conv_unit1 = ToolboxResidualConvUnit(channels)
        self.res_conv_unit2 = ToolboxResidualConvUnit(channels)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.res_conv_unit1(skip)
        x = self.res_conv_unit2(x)
        return self.project(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


class ToolboxDPTHead(nn.Module):
    """Reference: the Monocular-Depth-Estimation-Toolbox ``DPTHead`` as SN-Netv2's NYUv2 config builds it
    (``readout_type='project'``, ``channels=256``, ``norm_cfg=None``, ReLU), written out in plain torch from
    its layer list (``depth/models/decode_heads/dpt_head.py``, ``decode_head.py``) with its module names.

    ``forward(maps, cls_tokens)``: 4 maps ``(B, C, h, w)`` and cls tokens ``(B, C)`` -> depth ``(B, 1, 16h, 16w)``.
    """

    def __init__(self, embed_dims: int, post_process_channels: Sequence[int] = (96, 192, 384, 768),
                 channels: int = 256, min_depth: float = 1e-3):
        super().__init__()
        c0, c1, _, c3 = post_process_channels
        self.readout_projects = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * embed_dims, embed_dims), nn.GELU()) for _ in post_process_channels)
        self.projects = nn.ModuleList(nn.Conv2d(embed_dims, c, 1) for c in post_process_channels)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(c0, c0, 4, stride=4), nn.ConvTranspose2d(c1, c1, 2, stride=2), nn.Identity(),
            nn.Conv2d(c3, c3, 3, stride=2, padding=1)])
        self.convs = nn.ModuleList(nn.Conv2d(c, channels, 3, padding=1, bias=False) for c in post_process_channels)
        self.fusion_blocks = nn.ModuleList(ToolboxFusionBlock(channels) for _ in post_process_channels)
        self.fusion_blocks[0].res_conv_unit1 = None
        self.project = nn.Conv2d(channels, channels, 3, padding=1)  # ConvModule: bias, then ReLU
        self.conv_depth = nn.Sequential(  # HeadDepth
            nn.Conv2d(channels, channels // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(channels // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 1))
        self.min_depth = min_depth

    def forward(self, maps: Tuple[torch.Tensor, ...], cls_tokens: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = []
        for i, (m, cls) in enumerate(zip(maps, cls_tokens)):
            tokens = m.flatten(2).transpose(1, 2)
            tokens = self.readout_projects[i](torch.cat([tokens, cls[:, None].expand_as(tokens)], dim=-1))
            m = tokens.transpose(1, 2).reshape(m.shape)
            x.append(self.convs[i](self.resize_layers[i](self.projects[i](m))))
        out = self.fusion_blocks[0](x[-1])
        for i in range(1, len(self.fusion_blocks)):
            out = self.fusion_blocks[i](out, x[-(i + 1)])
        out = F.relu(self.project(out))
        return F.relu(self.conv_depth(out)) + self.min_depth


def module_pairs(ours: DPTHead, ref: ToolboxDPTHead) -> List[Tuple[nn.Module, nn.Module]]:
    """(our module, toolbox module) for every layer with weights; toolbox fusion blocks run coarsest first."""
    pairs = []
    for i, stage in enumerate(ours.reassemble):
        pairs += [(stage.readout.project[0], ref.readout_projects[i][0]), (stage.project, ref.projects[i]),
                  (stage.resample, ref.resize_layers[i]), (ours.layer_rn[i], ref.convs[i])]
    for i, block in enumerate(reversed(ours.fusion)):
        theirs = ref.fusion_blocks[i]
        units = [(block.residual2, theirs.res_conv_unit2)]
        if theirs.res_conv_unit1 is not None:
            units.append((block.residual1, theirs.res_conv_unit1))
        pairs += [(block.out_conv, theirs.project)]
        pairs += [(getattr(a, n), getattr(b, n)) for a, b in units for n in ("conv1", "conv2")]
    out, depth = ours.output, ref.conv_depth
    pairs += [(ours.project[0], ref.project), (out.conv1, depth[0]), (out.conv2, depth[2]), (out.conv3, depth[4])]
    return pairs


def toolbox_inputs(
    tokens: Sequence[torch.Tensor], grid: Tuple[int, int]
) -> Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]:
    """Our token features ``(B, 1 + h*w, C)`` as the toolbox's ``(maps (B, C, h, w), cls tokens (B, C))``."""
    maps = tuple(t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[-1], *grid) for t in tokens)
    return maps, tuple(t[:, 0] for t in tokens)


def test_head_has_the_toolbox_head_parameters_and_computes_its_function():
    torch.manual_seed(0)
    ours, ref = DPTHead(1024), ToolboxDPTHead(1024)  # the paper's DeiT3-L width and head sizes
    num_ref = sum(p.numel() for p in ref.parameters())
    assert sum(p.numel() for p in ours.parameters()) == num_ref == 28_233_601
    pairs = module_pairs(ours, ref)
    assert sum(p.numel() for _, m in pairs for p in m.parameters()) == num_ref  # every toolbox layer is paired
    with torch.no_grad():
        ref.conv_depth[4].bias.fill_(1.0)  # with its default init every pixel here is clamped to min_depth
        for mine, theirs in pairs:
            mine.load_state_dict(theirs.state_dict())  # strict: same tensors, same shapes, same biases
    grid, size = (4, 6), (64, 96)
    tokens = [torch.randn(2, 1 + grid[0] * grid[1], 1024) for _ in range(4)]
    with torch.no_grad():
        expected = ref(*toolbox_inputs(tokens, grid))
        torch.testing.assert_close(ours(tokens, grid, 1, size), expected, rtol=1e-4, atol=1e-5)
    assert expected.shape == (2, 1, *size) and (expected > 1e-3).all() and expected.std() > 0


def test_layers_the_toolbox_builds_as_conv_modules_start_with_their_init():
    torch.manual_seed(0)
    head = DPTHead(1024)
    convs = [stage.project for stage in head.reassemble] + list(head.layer_rn) + [head.project[0]]
    for block in head.fusion:
        units = [u for u in (block.residual1, block.residual2) if u is not None]
        convs += [block.out_conv] + [conv for u in units for conv in (u.conv1, u.conv2)]
    assert len(convs) == 4 + 4 + 1 + 4 + 2 * 7
    for conv in convs:  # mmcv kaiming_init: normal, fan_out, ReLU gain; bias 0
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.03)
        assert conv.bias is None or not conv.bias.any()
    conv = head.output.conv1  # a plain nn.Conv2d in the toolbox: PyTorch's uniform init, bound 1/sqrt(fan_in)
    assert conv.weight.abs().max() <= conv.weight[0].numel() ** -0.5 and conv.bias.any()


def test_head_gflops_at_480x640_are_the_toolbox_heads():
    ref, grid = ToolboxDPTHead(1024), (30, 40)
    tokens = [torch.zeros(1, 1 + grid[0] * grid[1], 1024) for _ in range(4)]
    expected = count_gflops(ref, toolbox_inputs(tokens, grid))
    assert head_gflops(DPTHead(1024), (480, 640), 16) == pytest.approx(expected, abs=0.01)
    assert expected == pytest.approx(167.78, abs=0.01)


# depth_estimation/model_flops/flops_dpt_deit3_s_stitch_l_nyu.json of ziplab/SN-Netv2 (FLOPs, fvcore, 1x3x480x640,
# DeiT3-S/L + DPT), keyed by upstream stitch id (13 unused)
UPSTREAM_DEIT3_S_L_DPT_FLOPS = {
    0: 208875853824, 1: 602608435200, 2: 569571549696, 3: 536652235776, 4: 504205174272, 5: 471285860352,
    6: 438366546432, 7: 405919484928, 8: 373000171008, 9: 340080857088, 10: 307633795584, 11: 274714481664,
    12: 241795167744, 14: 242857244160, 15: 275776558080, 16: 308223619584, 17: 341142933504, 18: 374062247424,
    19: 406509308928, 20: 439428622848, 21: 472347936768, 22: 504794998272, 23: 537714312192, 24: 570633626112,
    25: 570633626112, 26: 538186564608, 27: 505267250688, 28: 472347936768, 29: 439900875264, 30: 406981561344,
    31: 374062247424, 32: 341615185920, 33: 308695872000, 34: 275776558080, 35: 571105878528, 36: 538186564608,
    37: 505267250688, 38: 472820189184, 39: 439900875264, 40: 406981561344, 41: 374534499840, 42: 341615185920,
    43: 308695872000, 44: 570633626112, 45: 537714312192, 46: 505267250688, 47: 472347936768, 48: 439428622848,
    49: 406981561344, 50: 374062247424, 51: 341142933504, 52: 570633626112, 53: 538186564608, 54: 505267250688,
    55: 472347936768, 56: 439900875264, 57: 406981561344, 58: 374062247424, 59: 571105878528, 60: 538186564608,
    61: 505267250688, 62: 472820189184, 63: 439900875264, 64: 406981561344, 65: 570633626112, 66: 537714312192,
    67: 505267250688, 68: 472347936768, 69: 439428622848, 70: 570633626112, 71: 538186564608, 72: 505267250688,
    73: 472347936768, 74: 571105878528, 75: 538186564608, 76: 505267250688, 77: 570633626112, 78: 537714312192,
    79: 570633626112, 80: 242739672576, 81: 275186734080, 82: 308106048000, 83: 341025361920, 84: 373472423424,
    85: 406391737344, 86: 439311051264, 87: 471758112768, 88: 504677426688, 89: 537596740608, 90: 242267420160,
    91: 275186734080, 92: 308106048000, 93: 340553109504, 94: 373472423424, 95: 406391737344, 96: 438838798848,
    97: 471758112768, 98: 504677426688, 99: 242739672576, 100: 275658986496, 101: 308106048000, 102: 341025361920,
    103: 373944675840, 104: 406391737344, 105: 439311051264, 106: 472230365184, 107: 242739672576, 108: 275186734080,
    109: 308106048000, 110: 341025361920, 111: 373472423424, 112: 406391737344, 113: 439311051264, 114: 242267420160,
    115: 275186734080, 116: 308106048000, 117: 340553109504, 118: 373472423424, 119: 406391737344, 120: 242739672576,
    121: 275658986496, 122: 308106048000, 123: 341025361920, 124: 373944675840, 125: 242739672576, 126: 275186734080,
    127: 308106048000, 128: 341025361920, 129: 242267420160, 130: 275186734080, 131: 308106048000, 132: 242739672576,
    133: 275658986496, 134: 242739672576,
}


# depth_estimation/model_flops/flops_dpt_deit3_b_stitch_l_nyu.json of ziplab/SN-Netv2 (the same, DeiT3-B/L + DPT)
UPSTREAM_DEIT3_B_L_DPT_FLOPS = {
    0: 300972158976, 1: 602608435200, 2: 577885479936, 3: 552453949440, 4: 527966923776, 5: 502535393280,
    6: 477103862784, 7: 452616837120, 8: 427185306624, 9: 401753776128, 10: 377266750464, 11: 351835219968,
    12: 326403689472, 14: 327584123904, 15: 353015654400, 16: 377502680064, 17: 402934210560, 18: 428365741056,
    19: 452852766720, 20: 478284297216, 21: 503715827712, 22: 528202853376, 23: 553634383872, 24: 579065914368,
    25: 579065914368, 26: 554578888704, 27: 529147358208, 28: 503715827712, 29: 479228802048, 30: 453797271552,
    31: 428365741056, 32: 403878715392, 33: 378447184896, 34: 353015654400, 35: 580010419200, 36: 554578888704,
    37: 529147358208, 38: 504660332544, 39: 479228802048, 40: 453797271552, 41: 429310245888, 42: 403878715392,
    43: 378447184896, 44: 579065914368, 45: 553634383872, 46: 529147358208, 47: 503715827712, 48: 478284297216,
    49: 453797271552, 50: 428365741056, 51: 402934210560, 52: 579065914368, 53: 554578888704, 54: 529147358208,
    55: 503715827712, 56: 479228802048, 57: 453797271552, 58: 428365741056, 59: 580010419200, 60: 554578888704,
    61: 529147358208, 62: 504660332544, 63: 479228802048, 64: 453797271552, 65: 579065914368, 66: 553634383872,
    67: 529147358208, 68: 503715827712, 69: 478284297216, 70: 579065914368, 71: 554578888704, 72: 529147358208,
    73: 503715827712, 74: 580010419200, 75: 554578888704, 76: 529147358208, 77: 579065914368, 78: 553634383872,
    79: 579065914368, 80: 328292699136, 81: 352779724800, 82: 378211255296, 83: 403642785792, 84: 428129811456,
    85: 453561341952, 86: 478992872448, 87: 503479898112, 88: 528911428608, 89: 554342959104, 90: 327348194304,
    91: 352779724800, 92: 378211255296, 93: 402698280960, 94: 428129811456, 95: 453561341952, 96: 478048367616,
    97: 503479898112, 98: 528911428608, 99: 328292699136, 100: 353724229632, 101: 378211255296, 102: 403642785792,
    103: 429074316288, 104: 453561341952, 105: 478992872448, 106: 504424402944, 107: 328292699136, 108: 352779724800,
    109: 378211255296, 110: 403642785792, 111: 428129811456, 112: 453561341952, 113: 478992872448, 114: 327348194304,
    115: 352779724800, 116: 378211255296, 117: 402698280960, 118: 428129811456, 119: 453561341952, 120: 328292699136,
    121: 353724229632, 122: 378211255296, 123: 403642785792, 124: 429074316288, 125: 328292699136, 126: 352779724800,
    127: 378211255296, 128: 403642785792, 129: 327348194304, 130: 352779724800, 131: 378211255296, 132: 328292699136,
    133: 353724229632, 134: 328292699136,
}


@pytest.mark.parametrize("config, shipped", [
    ("dpt_snnetv2_deit3_s_l_nyu.py", UPSTREAM_DEIT3_S_L_DPT_FLOPS),
    ("dpt_snnetv2_deit3_b_l_nyu.py", UPSTREAM_DEIT3_B_L_DPT_FLOPS),
], ids=["deit3_s_l", "deit3_b_l"])
def test_per_stitch_gflops_at_480x640_match_upstreams_shipped_table(config, shipped):
    spec = train_cli.model_spec(train_cli.load_config(os.path.join(DPT_CONFIGS, config), []))
    torch.manual_seed(0)
    model = build_model(spec).eval()  # the config's anchors + DPT, random weights (FLOPs do not depend on them)
    table = depth_flops_table(model, (480, 640))
    space = model.backbone.space
    assert len(space) == len(shipped) == 134
    upstream = {sid: shipped[upstream_stitch_id(space, sid)] / 1e9 for sid in space.ids}
    ours = {sid: table.gflops[sid] for sid in space.ids}
    assert ours == pytest.approx(upstream, abs=0.01)
    # the one difference: upstream's model resizes its 480x640 output to 480x640 (a no-op that fvcore counts
    # as 4 FLOPs a pixel); this model does not run it
    resize = 4 * 480 * 640 / 1e9
    assert ours == pytest.approx({sid: g - resize for sid, g in upstream.items()}, abs=1e-6)


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

    monkeypatch.setattr(snnet_core.model.snnet.StitchedViT, "__init__", no_snnet)
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


def test_upstream_layer_math_is_part_of_the_spec_and_survives_export(tmp_path):
    """``upstream_layers=True`` (SN-Netv2 depth code's blocks) changes the outputs, is stored with the spec and
    is rebuilt by ``load_exported_model``."""
    torch.manual_seed(0)
    standard = build_model(ModelSpec(**TINY_SPEC)).eval()
    with torch.no_grad():  # LayerScale starts at 1e-6 in timm's DeiT3, which would hide the blocks' math
        for name, p in standard.named_parameters():
            if name.endswith(".gamma"):
                p.fill_(1.0)
    spec = ModelSpec(**TINY_SPEC, upstream_layers=True)
    upstream = build_model(spec).eval()
    upstream.load_state_dict(standard.state_dict())
    assert upstream.backbone.config()["upstream_layers"] is True
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert (upstream.backbone(x).tokens - standard.backbone(x).tokens).abs().max() > 1e-2
        upstream.backbone.set_stitch(11)
        expected = upstream(x)
    save_exported_stitch(str(tmp_path / "stitch.pth"), upstream, spec, 11)
    with torch.no_grad():
        torch.testing.assert_close(load_exported_model(str(tmp_path / "stitch.pth"))(x), expected)
