"""snnet_vitdet model side: LazyConfigs and their sources, the stitched/plain ViTDet backbones, window
attention, relative position bias, layer decay."""
import ast
import glob
import io
import os
import re
import tokenize
from functools import partial

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling.backbone.vit import ViT, get_vit_lr_decay_rate
from detectron2.solver.build import get_default_optimizer_params
from omegaconf import DictConfig, ListConfig, OmegaConf
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from timm.models.vision_transformer import Attention

from projects.snnet_vitdet.backbone import (
    StitchedViTDetBackbone,
    TokenGrid,
    ViTDetAttention,
    ViTDetBackbone,
    global_block_indexes,
)
from projects.snnet_vitdet.export import export_detector
from projects.snnet_vitdet.lr_decay import get_snnet_lr_decay_rate
from snnet_core import build_anchor
from snnet_core.model.route import embed_images

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "projects", "snnet_vitdet", "configs")
COCO_CONFIGS = ["mask_rcnn_vitdet_deit3_s_100ep", "mask_rcnn_vitdet_deit3_l_100ep", "mask_rcnn_snnetv2_deit3_s_l_100ep"]
# the second pair: each config is the S one's with DeiT3-B as the small anchor
B_L_CONFIGS = {"mask_rcnn_vitdet_deit3_b_100ep": "mask_rcnn_vitdet_deit3_s_100ep",
               "mask_rcnn_snnetv2_deit3_b_l_100ep": "mask_rcnn_snnetv2_deit3_s_l_100ep"}


def anchor(dim, depth, heads, img_size=64, **kwargs):
    return build_anchor("deit3_small_patch16_224", img_size=img_size, class_token=False,
                        embed_dim=dim, depth=depth, num_heads=heads, **kwargs)


def windowed_blocks(vit):
    return [i for i, b in enumerate(vit.blocks) if b.attn.window_size > 0]


def rel_pos_tables(module):
    return {n: p for n, p in module.named_parameters() if n.endswith(("rel_pos_h", "rel_pos_w"))}


def randomize_rel_pos(module, std=0.5):
    for table in rel_pos_tables(module).values():
        torch.nn.init.normal_(table, std=std)


# --- configs -----------------------------------------------------------------------------------------
def load_coco_config(name):
    cfg = LazyConfig.load(os.path.join(CONFIGS, "COCO", f"{name}.py"))
    net = cfg.model.backbone.net
    for vit in ([net.vit] if "vit" in net else [net.fast, net.slow]):
        assert str(vit.pretrained).startswith("checkpoints/deit_3_")  # DeiT3 paths are config keys
        vit.pretrained = None  # weights are never downloaded
    return cfg


def test_coco_configs_follow_the_paper_then_vitdet():
    for name in COCO_CONFIGS:
        cfg = load_coco_config(name)
        # paper Sec. 5.4: total batch 8 for 100 epochs; ViTDet's batch-64 schedule scaled by detectron2's rule
        assert cfg.dataloader.train.total_batch_size == 8 and cfg.train.max_iter * 8 == 100 * 118000
        assert list(cfg.lr_multiplier.scheduler.milestones) == [163889 * 8, 177546 * 8]
        assert cfg.lr_multiplier.warmup_length * cfg.train.max_iter == pytest.approx(250 * 8)
        assert cfg.optimizer.lr == pytest.approx(1e-4 / 8)
        assert (cfg.train.checkpointer.period, cfg.train.eval_period) == (40000, 40000)
        assert cfg.optimizer.weight_decay == 0.1 and tuple(cfg.optimizer.betas) == (0.9, 0.999)
        assert cfg.optimizer.params.overrides == {"pos_embed": {"weight_decay": 0.0}} and cfg.train.amp.enabled
        scale = cfg.dataloader.train.mapper.augmentations[1]
        assert (scale.min_scale, scale.max_scale, scale.target_height) == (0.1, 2.0, 1024)
        assert cfg.dataloader.evaluator.use_fast_impl is False  # pycocotools, no compiled ops
        assert cfg.dataloader.train.dataset.names == "coco_2017_train"
        net = cfg.model.backbone.net
        assert (net.window_size, net.num_global, net.use_rel_pos) == (14, 4, True)  # detectron2 ViTDet
    cfg = load_coco_config("mask_rcnn_snnetv2_deit3_s_l_100ep")
    assert cfg.snnet.ros_step_gflops == 10 and cfg.snnet.ls_init_images == 100
    net = cfg.model.backbone.net
    assert tuple(cfg.snnet.flops_input_size) == (1024, 1024) and (net.lora_rank, net.lora_alpha) == (16, 1.0)
    assert (net.fast.drop_path_rate, net.slow.drop_path_rate) == (0.1, 0.4)
    assert cfg.optimizer.params.lr_factor_func.keywords == {"num_layers": (12, 24), "lr_decay_rates": (0.7, 0.8)}


def flat_config(cfg, prefix=""):
    """``{dotted key: repr(value)}`` of a LazyConfig (callables by identity, as the config holds them)."""
    out = {}
    items = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else enumerate(cfg)
    for key, value in items:
        if isinstance(value, (DictConfig, ListConfig)):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = repr(value)
    return out


@pytest.mark.parametrize("name", sorted(B_L_CONFIGS))
def test_deit3_b_l_configs_are_the_s_recipes_with_deit3_b(name):
    b_cfg, s_cfg = flat_config(load_coco_config(name)), flat_config(load_coco_config(B_L_CONFIGS[name]))
    small = "model.backbone.net.fast" if "snnetv2" in name else "model.backbone.net.vit"
    changed = {k: (s_cfg.get(k), b_cfg.get(k)) for k in set(s_cfg) | set(b_cfg) if s_cfg.get(k) != b_cfg.get(k)}
    assert changed == {f"{small}.model_name": ("'deit3_small_patch16_224'", "'deit3_base_patch16_224'")}
    as_written = LazyConfig.load(os.path.join(CONFIGS, "COCO", f"{name}.py"))  # load_coco_config drops the paths
    assert OmegaConf.select(as_written, f"{small}.pretrained") == "checkpoints/deit_3_base_224_21k.pth"


def test_deit3_b_l_detector_instantiates_with_134_stitches():
    cfg = load_coco_config("mask_rcnn_snnetv2_deit3_b_l_100ep")
    with torch.device("meta"):  # the architecture only: no memory, no weights
        net = instantiate(cfg.model.backbone.net)
    small, large = net.snnet.anchors
    assert (small.embed_dim, large.embed_dim, len(net.space), net.snnet.lora_rank) == (768, 1024, 134, 16)
    assert sorted(set(range(12)) - set(windowed_blocks(small))) == [2, 5, 8, 11]


def test_snnetv1_config_is_the_s_l_recipe_fs_only_uniform_without_lora_sl():
    v1, v2 = (flat_config(load_coco_config(f"mask_rcnn_snnetv{v}_deit3_s_l_100ep")) for v in (1, 2))
    changed = {k: (v2.get(k), v1.get(k)) for k in set(v1) | set(v2) if v1.get(k) != v2.get(k)}
    kinds = "model.backbone.net.route_types"
    assert changed == {f"{kinds}.2": ("'SF'", None), f"{kinds}.3": ("'FSF'", None), f"{kinds}.4": ("'SFS'", None),
                       "model.backbone.net.lora_rank": ("16", "0"), "snnet.sampling": ("'ros'", "'uniform'"),
                       "train.output_dir": (v2["train.output_dir"], "'output/snnet_vitdet_v1_s_l'")}
    assert (v1[f"{kinds}.0"], v1[f"{kinds}.1"]) == ("'anchor'", "'FS'")
    with torch.device("meta"):
        net = instantiate(load_coco_config("mask_rcnn_snnetv1_deit3_s_l_100ep").model.backbone.net)
    assert net.space.ids == list(range(13)) and net.space.route_types == ("anchor", "FS")  # v2's ids kept


SOURCE_COMMENT = re.compile(r"#.*(paper Sec\.|detectron2|upstream|project:)")
RECIPE_FILES = sorted(glob.glob(os.path.join(CONFIGS, "COCO", "*.py"))
                      + glob.glob(os.path.join(CONFIGS, "common", "*.py")))


def values_without_source(source):
    """Lines of the recipe values in ``source`` with no source comment: every module-level assignment, and
    every keyword argument that is not itself a call (e.g. ``L(ViTDetBackbone)(window_size=14)``), must carry
    a comment naming its source on one of its lines."""
    commented = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                 if tok.type == tokenize.COMMENT and SOURCE_COMMENT.match(tok.string)}
    tree = ast.parse(source)
    values = [node for node in tree.body if isinstance(node, (ast.Assign, ast.AugAssign))]
    values += [kw for node in values for kw in ast.walk(node)
               if isinstance(kw, ast.keyword) and not isinstance(kw.value, ast.Call)]
    return sorted({node.lineno for node in values if commented.isdisjoint(range(node.lineno, node.end_lineno + 1))})


def test_source_check_flags_a_value_without_source():
    assert values_without_source("a = 1  # detectron2 ViTDet\nb = 2  # a comment\n") == [2]
    assert values_without_source("m = L(f)(\n    x=1,  # paper Sec. 5.4\n    y=2,\n)\n") == [3]
    assert values_without_source("m = L(f)(\n    x=L(g)(z=1),  # project: why\n)\n") == []


@pytest.mark.parametrize("path", RECIPE_FILES, ids=os.path.basename)
def test_every_recipe_value_names_its_source(path):
    with open(path) as f:
        missing = values_without_source(f.read())
    assert not missing, f"{path}: lines {missing} set a value without a comment naming its source"


@pytest.mark.parametrize("name", COCO_CONFIGS)
def test_coco_configs_instantiate(name):
    cfg = load_coco_config(name)
    model = instantiate(cfg.model)
    net = model.backbone.net
    shape = net.output_shape()["last_feat"]
    if isinstance(net, StitchedViTDetBackbone):
        small, large = net.snnet.anchors
        assert len(net.space) == 134 and net.snnet.lora_rank == 16
        assert (small.embed_dim, large.embed_dim, shape.channels) == (384, 1024, 1024)
        assert sorted(set(range(12)) - set(windowed_blocks(small))) == [2, 5, 8, 11]
        assert sorted(set(range(24)) - set(windowed_blocks(large))) == [5, 11, 17, 23]
        vits = [small, large]
    else:
        depth = len(net.vit.blocks)
        assert shape.channels == {12: 384, 24: 1024}[depth]
        assert net.vit.cls_token is None
        assert len(windowed_blocks(net.vit)) == depth - 4
        vits = [net.vit]
    for vit in vits:  # abs pos: detectron2's pretrain_img_size 224 (14x14, no cls entry), resized per forward
        assert vit.pos_embed.shape[1] == 14 * 14
    for vit in vits:  # detectron2's table sizes: 2 * 14 - 1 in windowed blocks, 2 * 64 - 1 in global ones
        for i, block in enumerate(vit.blocks):
            size = 27 if i in windowed_blocks(vit) else 127
            assert block.attn.rel_pos_h.shape == block.attn.rel_pos_w.shape == (size, 64)
    assert shape.stride == 16 and model.backbone.padding_constraints["square_size"] == 1024
    assert sorted(model.backbone.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)  # the layer-decay function knows every parameter name
    assert min(g["lr"] for g in optimizer.param_groups) < 1e-4 * 0.7 ** 11


def test_tiny_config_instantiates_and_detects():
    cfg = LazyConfig.load(os.path.join(CONFIGS, "synthetic", "mask_rcnn_snnetv2_tiny.py"))
    assert cfg.datasets.coco_json.synthetic_shapes_train.json_file == \
        "output/synthetic_coco/annotations/instances_train.json"
    model = instantiate(cfg.model).eval()
    net = model.backbone.net
    images = [{"image": torch.randint(0, 255, (3, 128, 96), dtype=torch.uint8), "height": 128, "width": 96}]
    with torch.no_grad():
        for stitch_id in (0, 1, 13):
            net.set_stitch(stitch_id)
            assert model(images)[0]["instances"].image_size == (128, 96)


def test_pretrained_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = str(tmp_path / "other.pth")
    torch.save(anchor(64, 4, 2).state_dict(), path)
    with pytest.raises(RuntimeError, match="does not fit"):
        anchor(32, 4, 2, pretrained=path)


# --- backbone ----------------------------------------------------------------------------------------
def test_global_block_indexes():
    assert global_block_indexes(12) == [2, 5, 8, 11]
    assert global_block_indexes(24) == [5, 11, 17, 23]
    assert global_block_indexes(8, 2) == [3, 7]
    with pytest.raises(ValueError):
        global_block_indexes(4, 5)


def test_window_attention_attends_within_windows_only():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, qkv_bias=True).eval()
    grid = TokenGrid()
    grid.hw = (4, 6)
    windowed = ViTDetAttention(attn, 2, grid).eval()
    x = torch.randn(2, 24, 16)
    out = windowed(x).view(2, 4, 6, 16)
    for r in (0, 2):
        for c in (0, 2, 4):
            window = x.view(2, 4, 6, 16)[:, r:r + 2, c:c + 2].reshape(2, 4, 16)
            torch.testing.assert_close(out[:, r:r + 2, c:c + 2].reshape(2, 4, 16), attn(window))
    # a window covering the whole grid is global attention
    grid.hw = (4, 4)
    torch.testing.assert_close(ViTDetAttention(attn, 4, grid)(x[:, :16]), attn(x[:, :16]))
    torch.testing.assert_close(ViTDetAttention(attn, 0, grid)(x[:, :16]), attn(x[:, :16]))
    grid.hw = (5, 5)
    with pytest.raises(RuntimeError, match="do not match the patch grid"):
        windowed(x)


def test_padded_windows_and_grid_follow_the_input():
    torch.manual_seed(0)
    vit = anchor(32, 2, 2, init_values=1.0)  # LayerScale 1: attention visibly shapes the output
    plain = ViTDetBackbone(anchor(32, 2, 2, init_values=1.0), window_size=0, use_rel_pos=False)  # global everywhere
    windowed = ViTDetBackbone(vit, window_size=3, num_global=1, use_rel_pos=False)  # 4x5 grid padded to 6x6 in block 0
    plain.load_state_dict(windowed.state_dict())
    x = torch.randn(1, 3, 64, 80)
    out = windowed(x)["last_feat"]
    assert out.shape == (1, 32, 4, 5) and windowed_blocks(vit) == [0]
    assert not torch.allclose(out, plain(x)["last_feat"])  # block 0 really is windowed
    assert windowed(torch.randn(1, 3, 48, 32))["last_feat"].shape == (1, 32, 3, 2)


def test_stitched_backbone_output_for_every_stitch():
    torch.manual_seed(0)
    backbone = StitchedViTDetBackbone(anchor(32, 4, 2), anchor(48, 8, 3), lora_rank=4, window_size=2, num_global=2)
    shape = backbone.output_shape()["last_feat"]
    assert (shape.channels, shape.stride) == (48, 16)
    x = torch.randn(2, 3, 64, 96)
    outputs = {}
    for stitch_id in backbone.space.ids:
        assert backbone.set_stitch(stitch_id).id == stitch_id == backbone.stitch_id
        outputs[stitch_id] = backbone(x)["last_feat"]
        assert outputs[stitch_id].shape == (2, 48, 4, 6)
    assert len(outputs) == 14
    # the small anchor's output reaches the pyramid through the last small-to-large stitching layer
    small = backbone.snnet.anchors[0]
    tokens = small.blocks(embed_images(small, x)[0])
    expected = backbone.snnet.stitch_s2l[3](tokens).transpose(1, 2).reshape(2, 48, 4, 6)
    torch.testing.assert_close(outputs[0], expected)
    assert all(not torch.allclose(outputs[0], outputs[i]) for i in outputs if i != 0)
    with pytest.raises(KeyError, match="unknown stitch id 99"):
        backbone.set_stitch(99)


# --- relative position bias ------------------------------------------------------------------------
def test_zero_rel_pos_tables_change_nothing():
    torch.manual_seed(0)
    kwargs = dict(window_size=2, num_global=2)
    with_rel_pos = ViTDetBackbone(anchor(32, 4, 2, init_values=1.0), use_rel_pos=True, **kwargs).double()
    without = ViTDetBackbone(anchor(32, 4, 2, init_values=1.0), use_rel_pos=False, **kwargs).double()
    tables = rel_pos_tables(with_rel_pos)
    assert len(tables) == 8 and all(not t.any() for t in tables.values())  # zero-initialised, as detectron2
    assert without.load_state_dict(with_rel_pos.state_dict(), strict=False).unexpected_keys == sorted(tables)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)  # 4x6 grid: padded windows, resampled global tables
    # float64: SDPA with a (zero) mask takes another kernel than without one, equal up to rounding
    torch.testing.assert_close(with_rel_pos(x)["last_feat"], without(x)["last_feat"], rtol=0, atol=1e-12)


def detectron2_vit_like(ours, img_size, pretrain_img_size):
    """detectron2's own ViT (its Attention with use_rel_pos=True) carrying the weights of ``ours``."""
    vit = ours.vit
    windowed = windowed_blocks(vit)
    d2 = ViT(img_size=img_size, patch_size=16, embed_dim=vit.embed_dim, depth=len(vit.blocks),
             num_heads=vit.blocks[0].attn.num_heads, window_size=vit.blocks[windowed[0]].attn.window_size,
             window_block_indexes=windowed, use_rel_pos=True, pretrain_use_cls_token=False,
             pretrain_img_size=pretrain_img_size).eval()
    state = {k[len("vit."):].replace("attn.attn.", "attn."): v for k, v in ours.state_dict().items()
             if ".ls1." not in k and ".ls2." not in k}  # LayerScale 1 (init_values=1.0): identity
    d2.load_state_dict(state)
    return d2


@pytest.mark.parametrize("image_hw", [(80, 80), (64, 96)])
def test_vitdet_backbone_equals_detectron2_vit(image_hw):
    """Relative position (windowed and global) and the absolute table kept at its pretraining grid (3x3 here, as
    224 -> 14x14 for DeiT3) and resized per forward, against detectron2's ViT with the same weights."""
    torch.manual_seed(0)
    vit = anchor(32, 4, 2, img_size=48, init_values=1.0)
    ours = ViTDetBackbone(vit, window_size=2, num_global=2, img_size=80).eval()
    randomize_rel_pos(ours)  # blocks 0, 2 windowed (tables for 2x2 windows), 1, 3 global (5x5 grid)
    with torch.no_grad():
        ours.vit.pos_embed.normal_()
    d2 = detectron2_vit_like(ours, img_size=80, pretrain_img_size=48)
    x = torch.randn(2, 3, *image_hw)
    with torch.no_grad():
        out, expected = ours(x)["last_feat"], d2(x)["last_feat"]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and the tables matter
        randomize_rel_pos(ours, std=0.1)
        assert not torch.allclose(ours(x)["last_feat"], expected, atol=1e-3)


def test_stitched_backbone_rel_pos_tables_per_block_of_each_anchor():
    torch.manual_seed(0)
    backbone = StitchedViTDetBackbone(anchor(32, 4, 2), anchor(48, 8, 3), lora_rank=4, window_size=2, num_global=2)
    small, large = backbone.snnet.anchors
    for vit, global_ids, head_dim in ((small, [1, 3], 16), (large, [3, 7], 16)):
        for i, block in enumerate(vit.blocks):
            size = 2 * 4 - 1 if i in global_ids else 2 * 2 - 1  # 4x4 grid of the 64 px anchors, 2x2 windows
            assert block.attn.rel_pos_h.shape == block.attn.rel_pos_w.shape == (size, head_dim)
    tables = rel_pos_tables(backbone)
    assert len(tables) == 2 * (4 + 8) and len({t.data_ptr() for t in tables.values()}) == len(tables)

    x = torch.randn(1, 3, 64, 64)
    for stitch_id in (0, 1, 9):
        backbone.zero_grad(set_to_none=True)
        stitch = backbone.set_stitch(stitch_id)
        backbone(x)["last_feat"].square().mean().backward()
        ran = {f"snnet.anchors.{seg.anchor}.blocks.{b}." for seg in stitch.segments for b in range(seg.start, seg.end)}
        for name, table in tables.items():
            if name[:name.index("attn.")] in ran:
                assert table.grad is not None and table.grad.abs().sum() > 0, (stitch.route, name)
            else:
                assert table.grad is None, (stitch.route, name)


def test_rel_pos_tables_stay_zero_when_loading_checkpoints_without_them(tmp_path):
    torch.manual_seed(0)
    pretrained = str(tmp_path / "deit3.pth")  # a DeiT3-format classification checkpoint: no tables
    torch.save(anchor(32, 4, 2, init_values=1.0).state_dict(), pretrained)
    built = ViTDetBackbone(anchor(32, 4, 2, pretrained=pretrained), window_size=2, num_global=2)
    assert all(not t.any() for t in rel_pos_tables(built).values())

    detector = str(tmp_path / "model.pth")  # a detector trained without relative position
    plain = _Detector(ViTDetBackbone(anchor(32, 4, 2, init_values=1.0), window_size=2, num_global=2,
                                     use_rel_pos=False))
    torch.save({"model": plain.state_dict()}, detector)
    model = _Detector(ViTDetBackbone(anchor(32, 4, 2, init_values=1.0), window_size=2, num_global=2))
    DetectionCheckpointer(model).load(detector)  # detectron2 logs the missing tables and leaves them at zero
    assert all(not t.any() for t in rel_pos_tables(model).values())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone.net(x)["last_feat"], plain.backbone.net(x)["last_feat"])


# --- layer decay -------------------------------------------------------------------------------------
def lr_of_each_parameter(model, lr_factor_func, base_lr=1.0):
    groups = get_default_optimizer_params(model, base_lr=base_lr, weight_decay=0.1, weight_decay_norm=0.0,
                                          lr_factor_func=lr_factor_func,
                                          overrides={"pos_embed": {"weight_decay": 0.0}})
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


class _Detector(torch.nn.Module):
    """Parameter names as in GeneralizedRCNN: backbone.net.* and a head."""

    def __init__(self, net):
        super().__init__()
        self.backbone = torch.nn.Module()
        self.backbone.net = net
        self.backbone.simfp_2 = torch.nn.Conv2d(4, 4, 1)
        self.roi_heads = torch.nn.Linear(4, 4)


def test_two_anchor_layer_decay_per_parameter():
    backbone = StitchedViTDetBackbone(anchor(16, 12, 2), anchor(24, 24, 2), lora_rank=2)
    lr = lr_of_each_parameter(_Detector(backbone), partial(get_snnet_lr_decay_rate, num_layers=(12, 24),
                                                          lr_decay_rates=(0.7, 0.8)))
    p = "backbone.net.snnet."
    expected = {
        p + "anchors.0.patch_embed.proj.weight": 0.7 ** 13,
        p + "anchors.0.pos_embed": 0.7 ** 13,
        p + "anchors.0.blocks.0.attn.attn.qkv.weight": 0.7 ** 12,
        p + "anchors.0.blocks.5.mlp.fc1.bias": 0.7 ** 7,
        p + "anchors.0.blocks.11.norm2.weight": 0.7,
        p + "anchors.0.blocks.2.attn.rel_pos_h": 0.7 ** 10,  # tables decay with their block, as in detectron2
        p + "anchors.1.blocks.5.attn.rel_pos_w": 0.8 ** 19,
        p + "anchors.1.patch_embed.proj.weight": 0.8 ** 25,
        p + "anchors.1.blocks.0.ls1.gamma": 0.8 ** 24,
        p + "anchors.1.blocks.23.attn.attn.proj.weight": 0.8,
        # s2l k (after small block k) feeds large block 2k+2 -> layer 2k+3
        p + "stitch_s2l.0.lora_up": 0.8 ** 22,
        p + "stitch_s2l.4.bias": 0.8 ** 14,
        p + "stitch_s2l.10.lora_down": 0.8 ** 2,
        p + "stitch_s2l.11.lora_up": 1.0,  # maps the small anchor's output to the pyramid
        # l2s k (after large block 2k+1) feeds small block k+1 -> layer k+2
        p + "stitch_l2s.0.lora_up": 0.7 ** 11,
        p + "stitch_l2s.10.bias": 0.7 ** 1,
        "backbone.simfp_2.weight": 1.0,
        "roi_heads.weight": 1.0,
    }
    for name, factor in expected.items():
        assert lr[name][0] == pytest.approx(factor), name
    assert p + "stitch_s2l.0.weight" not in lr  # frozen LS solution under LoRA SL
    assert lr[p + "anchors.1.pos_embed"][1] == 0.0 and lr[p + "anchors.0.blocks.0.norm1.weight"][1] == 0.0
    assert lr[p + "anchors.0.blocks.0.mlp.fc1.weight"][1] == 0.1
    assert lr[p + "anchors.1.blocks.5.attn.rel_pos_w"][1] == 0.1  # detectron2 ViTDet overrides pos_embed only


def test_single_anchor_baseline_uses_vitdet_layer_decay():
    lr = lr_of_each_parameter(_Detector(ViTDetBackbone(anchor(16, 12, 2))),
                              partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7))
    assert lr["backbone.net.vit.pos_embed"][0] == pytest.approx(0.7 ** 13)
    assert lr["backbone.net.vit.blocks.3.attn.attn.qkv.weight"][0] == pytest.approx(0.7 ** 9)
    # relative position tables: lr and weight decay of detectron2's ViT for the same block
    d2_rule = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
    for block in (2, 3):
        assert lr[f"backbone.net.vit.blocks.{block}.attn.rel_pos_h"] == (
            pytest.approx(d2_rule(f"backbone.net.blocks.{block}.attn.rel_pos_h")), 0.1)
    assert lr["roi_heads.weight"][0] == 1.0


def test_backbone_lora_rank_trains_the_factors_rel_pos_tables_and_heads_only(tmp_path):
    cfg = LazyConfig.load(os.path.join(CONFIGS, "synthetic", "mask_rcnn_snnetv2_tiny.py"))
    cfg.model.backbone.net.backbone_lora_rank = 2
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    snnet = model.backbone.net.snnet
    assert snnet.backbone_lora_rank == 2 and snnet.config()["backbone_lora_rank"] == 2
    trained_in_anchors = ("lora_down", "lora_up", "rel_pos_h", "rel_pos_w")  # rel pos: zero-init, in no checkpoint
    assert {n.rsplit(".", 1)[1] for n, p in snnet.anchors.named_parameters() if p.requires_grad} == set(
        trained_in_anchors)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    instances = Instances((128, 128), gt_boxes=Boxes(torch.tensor([[10.0, 20.0, 60.0, 90.0]])),
                          gt_classes=torch.tensor([1]))
    mask = torch.zeros(1, 128, 128, dtype=torch.bool)
    mask[:, 20:90, 10:60] = True
    instances.gt_masks = BitMasks(mask)
    batch = [{"image": torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8), "height": 128, "width": 128,
              "instances": instances}]
    model.backbone.net.set_stitch(13)  # through both anchors
    with EventStorage(0):
        loss = sum(model(batch).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    anchors_moved = {n for n in moved if ".snnet.anchors." in n}
    assert anchors_moved and all(n.endswith(trained_in_anchors) for n in anchors_moved)
    assert any(n.startswith("roi_heads.") for n in moved) and any(".snnet.stitch_" in n for n in moved)
    # the exported detector holds the merged layers: plain Linear, the SN-Net's features
    paths = export_detector(cfg, model.eval(), 13, str(tmp_path))
    exported = instantiate(LazyConfig.load(paths["config"]).model).eval()
    DetectionCheckpointer(exported).load(paths["weights"])
    assert not any(n.endswith(("lora_down", "lora_up")) for n in exported.state_dict())
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(exported.backbone.net(images)["last_feat"],
                                   model.backbone.net(images)["last_feat"], rtol=1e-4, atol=1e-5)
