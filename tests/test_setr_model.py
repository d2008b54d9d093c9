"""SETR segmentation model (projects/snnet_setr): the SETR-Naive head, losses, sliding-window inference, per-stitch
predictions over shared route prefixes, FLOPs against upstream SN-Netv2's table, and the LazyConfigs."""
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import LazyConfig, instantiate

from projects.snnet_setr.head import SETRUPHead
from projects.snnet_setr.model import (SETR, StitchedSETR, ViTBackbone, decode_head_cost, model_for_counting,
                                       setr_flops_table, slide_windows)
from projects.snnet_setr.optim import custom_keys_lr_factor
from snnet_core import StitchedViT, build_flops_table, count_gflops, export_stitch
from snnet_core.model.stitch_space import ROUTE_TYPES, map_out_indices_to_fast
from snnet_core.model.upstream import stitch_id_from_upstream
from snnet_core.training.sampling import flops_bins
from tests.conftest import tiny_snnet

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "projects", "snnet_setr", "configs")
NUM_CLASSES = 5


def tiny_setr(num_classes=NUM_CLASSES, crop=(64, 64), stride=(32, 32), with_aux=True, **kwargs):
    """A stitched SETR on the conftest anchors (4/8 blocks, 32/48 wide), 16-channel heads, eval mode."""
    net = tiny_snnet(out_indices=(1, 3, 5, 7))
    torch.manual_seed(0)
    aux = [SETRUPHead(48, num_classes, in_index=i, channels=16, num_convs=2, norm="BN") for i in range(3)]
    model = StitchedSETR(backbone=net, decode_head=SETRUPHead(48, num_classes, in_index=3, channels=16, norm="BN"),
                         auxiliary_heads=aux if with_aux else [], crop_size=crop, test_stride=stride, **kwargs)
    return model.eval()


def random_image(height, width, seed=0):
    return torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ------------------------------------------------------------------------------------------------- head
def test_setr_up_head_layers_and_shapes():
    naive = SETRUPHead(48, NUM_CLASSES, in_index=3, channels=16, num_convs=1, norm="BN")
    aux = SETRUPHead(48, NUM_CLASSES, in_index=0, channels=16, num_convs=2, norm="BN")
    feature = torch.randn(2, 48, 3, 5)
    assert naive(feature).shape == (2, NUM_CLASSES, 12, 20)  # x4
    assert aux(feature).shape == (2, NUM_CLASSES, 48, 80)  # x4 x4
    assert naive.norm.eps == 1e-6 and naive.norm.normalized_shape == (48,)
    conv, norm, act = naive.up_convs[0]
    assert conv.kernel_size == (1, 1) and conv.bias is None and isinstance(norm, torch.nn.BatchNorm2d)
    assert isinstance(act, torch.nn.ReLU) and naive.dropout is None
    assert [m[0].in_channels for m in aux.up_convs] == [48, 16]
    with pytest.raises(ValueError, match="kernel_size must be 1 or 3"):
        SETRUPHead(48, NUM_CLASSES, kernel_size=5)


def test_head_math_is_layernorm_over_tokens_then_conv_bn_relu_upsample_classifier():
    torch.manual_seed(0)
    head = SETRUPHead(8, 3, channels=4, norm="BN").eval()
    feature = torch.randn(1, 8, 2, 3)
    tokens = F.layer_norm(feature.flatten(2).transpose(1, 2), (8,), head.norm.weight, head.norm.bias, 1e-6)
    x = tokens.transpose(1, 2).reshape(1, 8, 2, 3)
    conv, bn, _ = head.up_convs[0]
    x = F.relu(bn(conv(x)))
    x = F.interpolate(x, size=(8, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(head(feature), head.conv_seg(x))


# ------------------------------------------------------------------------------------------------- training
def test_training_losses_are_mmseg_cross_entropy_with_aux_weight():
    model = tiny_setr().train()
    image = random_image(64, 64)
    label = torch.randint(0, NUM_CLASSES, (64, 64), generator=torch.Generator().manual_seed(1))
    label[:20] = 255  # ignored
    torch.manual_seed(0)
    losses = model([{"image": image, "sem_seg": label}])
    assert sorted(losses) == ["loss_aux_0", "loss_aux_1", "loss_aux_2", "loss_sem_seg"]
    assert all(v.requires_grad and v.dim() == 0 for v in losses.values())

    maps = model.backbone(model.normalize(image)[None]).feature_maps()
    for name, head, weight in [("loss_sem_seg", model.decode_head, 1.0)] + [
            (f"loss_aux_{i}", h, 0.4) for i, h in enumerate(model.auxiliary_heads)]:
        logits = F.interpolate(head(maps[head.in_index]), size=(64, 64), mode="bilinear", align_corners=False)
        per_pixel = F.cross_entropy(logits, label[None], ignore_index=255, reduction="none")
        # mmseg avg_non_ignore=False: the mean over all 64*64 pixels, the ignored ones counting 0
        expected = per_pixel.sum() / (64 * 64) * weight
        torch.testing.assert_close(losses[name], expected)
        assert not torch.allclose(losses[name], F.cross_entropy(logits, label[None], ignore_index=255) * weight)


def test_training_pads_to_the_crop_with_ignored_labels_and_refuses_mismatched_labels():
    model = tiny_setr(crop=(64, 64)).train()
    small = {"image": random_image(48, 64), "sem_seg": torch.zeros(48, 64, dtype=torch.long)}
    full = {"image": random_image(64, 64, seed=1), "sem_seg": torch.zeros(64, 64, dtype=torch.long)}
    seen = []
    hook = model.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model([small, full])
    hook.remove()
    assert seen == [(2, 3, 64, 64)]
    with pytest.raises(ValueError, match=r"label \(32, 64\) and image \(48, 64\) differ in size \(a.png\)"):
        model([dict(small, sem_seg=torch.zeros(32, 64, dtype=torch.long), file_name="a.png")])


# ------------------------------------------------------------------------------------------------- inference
def test_inference_outputs_at_the_requested_size_and_no_auxiliary_head_runs():
    model = tiny_setr()
    calls = []
    for head in model.auxiliary_heads:
        head.register_forward_hook(lambda m, i, o: calls.append(m))
    with torch.no_grad():
        out = model([{"image": random_image(80, 112), "height": 40, "width": 56}, {"image": random_image(96, 64)}])
    assert [o["sem_seg"].shape for o in out] == [(NUM_CLASSES, 40, 56), (NUM_CLASSES, 96, 64)]
    assert calls == []


def test_slide_windows_follow_mmseg():
    assert slide_windows(512, 683, (512, 512), (341, 341)) == [(0, 512, 0, 512), (0, 512, 171, 683)]
    assert slide_windows(300, 400, (512, 512), (341, 341)) == [(0, 300, 0, 400)]
    windows = slide_windows(1024, 2048, (512, 512), (341, 341))
    assert len(windows) == 3 * 6 and windows[-1] == (512, 1024, 1536, 2048)
    assert windows[1] == (0, 512, 341, 853)


def test_slide_inference_with_one_window_equals_the_whole_image_forward():
    slide, whole = tiny_setr(crop=(64, 64)), tiny_setr(crop=(64, 64), test_mode="whole")
    image = random_image(48, 64)
    with torch.no_grad():
        a = slide([{"image": image}])[0]["sem_seg"]
        b = whole([{"image": image}])[0]["sem_seg"]
        direct = whole.encode_decode(whole.normalize(image)[None])[0]
    assert torch.equal(a, b) and torch.equal(a, direct)


def test_slide_inference_equals_a_per_window_loop_with_count_averaging():
    model = tiny_setr(crop=(64, 64), stride=(32, 32))
    images = [random_image(80, 112), random_image(80, 112, seed=1), random_image(64, 96, seed=2)]
    with torch.no_grad():
        out = model([{"image": im} for im in images])
        for image, result in zip(images, out):
            normalized = model.normalize(image)
            total = torch.zeros(NUM_CLASSES, *image.shape[-2:])
            count = torch.zeros(1, *image.shape[-2:])
            for y1, y2, x1, x2 in slide_windows(*image.shape[-2:], (64, 64), (32, 32)):
                total[:, y1:y2, x1:x2] += model.encode_decode(normalized[None, :, y1:y2, x1:x2])[0]
                count[:, y1:y2, x1:x2] += 1
            assert count.min() >= 1 and count.max() > 1
            torch.testing.assert_close(result["sem_seg"], total / count, rtol=1e-4, atol=1e-5)


def test_windows_of_an_image_run_as_one_backbone_batch():
    model = tiny_setr(crop=(64, 64), stride=(32, 32))
    batches = []
    model.backbone.register_forward_hook(lambda m, i, o: batches.append(i[0].shape[0]))
    with torch.no_grad():
        model([{"image": random_image(80, 112)}])
    assert batches == [len(slide_windows(80, 112, (64, 64), (32, 32)))] == [6]


def test_backbone_reads_multiples_of_the_patch_size_and_logits_cover_the_window():
    model = tiny_setr(crop=(64, 64), test_mode="whole")
    seen = []
    model.backbone.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    with torch.no_grad():
        out = model([{"image": random_image(50, 70)}])
    assert seen == [(48, 64)] and out[0]["sem_seg"].shape == (NUM_CLASSES, 50, 70)


def test_stitch_predictions_equal_forward_with_the_stitch_selected():
    model = tiny_setr(crop=(64, 64), stride=(32, 32))
    inputs = [{"image": random_image(80, 112), "height": 40, "width": 56}, {"image": random_image(80, 112, seed=1)},
              {"image": random_image(48, 48, seed=2)}]
    ids = [0, 1, 3, 6, 9, 12]
    seen = {}
    with torch.no_grad():
        for stitch_id, group, outputs in model.stitch_predictions(inputs, ids):
            seen.setdefault(stitch_id, 0)
            seen[stitch_id] += len(group)
            model.set_stitch(stitch_id)
            for out, ref in zip(outputs, model(group)):
                torch.testing.assert_close(out["sem_seg"], ref["sem_seg"], rtol=1e-4, atol=1e-5)
    assert seen == {i: 3 for i in ids}  # every stitch: the group of two 80x112 images and the 48x48 one


def test_stitch_selection_and_single_vit_baseline():
    model = tiny_setr(stitch_id=5)
    assert model.stitch_id == 5 and model.backbone.stitch_id == 5 and model.space is model.backbone.space
    assert model.set_stitch(1).id == 1 and model.stitch_id == 1
    with pytest.raises(TypeError, match="StitchedSETR needs a snnet_core.StitchedViT"):
        StitchedSETR(backbone=ViTBackbone(tiny_snnet().anchors[0], (1, 3)), decode_head=SETRUPHead(32, 3))
    vit = tiny_snnet().anchors[1]
    baseline = SETR(backbone=ViTBackbone(vit, (1, 3, 5, 7)), decode_head=SETRUPHead(48, 3, in_index=3, norm="BN"),
                    crop_size=(64, 64), test_stride=(32, 32)).eval()
    with torch.no_grad():
        out = baseline([{"image": random_image(80, 96)}])
        route = baseline.backbone(torch.zeros(1, 3, 64, 64))
    assert out[0]["sem_seg"].shape == (3, 80, 96)
    assert [f.shape for f in route.features] == [(1, 17, 48)] * 4 and route.grid == (4, 4)
    with pytest.raises(ValueError, match=r"out_indices \[1, 9\]: \[9\] outside the ViT's 8 blocks"):
        ViTBackbone(vit, (1, 9))


# ------------------------------------------------------------------------------------------------- FLOPs
def test_flops_table_is_what_upstreams_trace_counts_and_ignores_auxiliary_heads():
    model, without_aux = tiny_setr(), tiny_setr(with_aux=False)
    table = setr_flops_table(model, (64, 64))
    assert setr_flops_table(without_aux, (64, 64)).gflops == table.gflops
    head_gflops, head_params = decode_head_cost(model, (64, 64))
    assert table.head_gflops == head_gflops > 0
    assert head_params == sum(p.numel() for p in model.decode_head.parameters())

    class Traced(torch.nn.Module):
        """What upstream's get_flops_snnet.py traces in eval mode (LoRA merged, auxiliary heads removed): the
        decode head on feature 3, and feature 0, whose shape upstream reads to reshape every feature; fvcore's
        trace drops the unused features 1 and 2."""

        def __init__(self, stitch, head):
            super().__init__()
            self.stitch, self.head = stitch, head

        def forward(self, images):
            out = self.stitch(images)
            return self.head(out.feature_maps()[3]), out.features[0]

    for stitch_id in range(len(model.space)):
        traced = Traced(export_stitch(model.backbone, stitch_id), model.decode_head)
        direct = count_gflops(traced, (torch.zeros(1, 3, 64, 64),))
        assert table.gflops[stitch_id] == pytest.approx(direct, rel=1e-12), model.space[stitch_id].route
    # the small anchor's features 1 and 2 are mapped by layers that feed only the auxiliary heads
    engine = build_flops_table(model.backbone, (64, 64), mode="features", head_gflops=head_gflops)
    assert table.gflops[0] < engine.gflops[0] and table.gflops[1] == pytest.approx(engine.gflops[1], rel=1e-12)


def test_ros_bins_of_the_tiny_config_are_several():
    cfg = LazyConfig.load(os.path.join(CONFIGS, "synthetic", "setr_snnetv2_tiny.py"))
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    table = setr_flops_table(model, tuple(cfg.snnet.flops_input_size))
    bins = flops_bins(table.gflops, cfg.snnet.ros_step_gflops)
    assert len(model.space) == 14 and 3 <= len(bins) <= 8


# DeiT3-S/L SETR-Naive at 512x512, ADE20K (150 classes): upstream SN-Netv2's
# segmentation/model_flops/snnet_flops_setr_naive_512x512_160k_b16_ade20k_deit_3_s_l_224_snnetv2.json
# (fvcore, backbone + decode head, auxiliary heads removed), in FLOPs, by upstream id.
UPSTREAM_FLOPS = {
    0: 33522505728,  # small anchor S[0:12]
    1: 363157291008,  # large anchor L[0:24]
    6: 225986083328,  # FS  S[0:5] -> L[10:24]
    23: 308973790208,  # SF  L[0:20] -> S[10:12]
    112: 198894332928,  # FSF S[0:4] -> L[8:20] -> S[10:12]
    25: 336468587008,  # SFS L[0:2] -> S[1:2] -> L[4:24]
    15: 89418462208,  # SF  L[0:4] -> S[2:12] (small features 1 and 2: their layers not counted)
    33: 116913259008,  # SFS L[0:2] -> S[1:10] -> L[20:24] (likewise)
}


@pytest.fixture(scope="module")
def deit3_s_l_table():
    """The engine's FLOPs table of the ADE20K S/L config's model at 512x512."""
    cfg = LazyConfig.load(os.path.join(CONFIGS, "ADE20K", "setr_naive_snnetv2_deit3_s_l_160k.py"))
    model = model_for_counting(cfg.model)
    return model, setr_flops_table(model, (512, 512))


def test_deit3_s_l_flops_match_upstream_table(deit3_s_l_table):
    model, table = deit3_s_l_table
    assert model.backbone.fast_out_indices == (4, 7, 9, 11)
    for upstream_id, flops in UPSTREAM_FLOPS.items():
        stitch_id = stitch_id_from_upstream(model.space, upstream_id)
        assert table.gflops[stitch_id] == pytest.approx(flops / 1e9, abs=1e-9), model.space[stitch_id].route
    assert min(table.gflops.values()) == table.gflops[0] and max(table.gflops.values()) == table.gflops[1]


def test_deit3_s_l_ros_gives_the_paper_13_bins_at_10_gflops(deit3_s_l_table):
    _, table = deit3_s_l_table
    bins = flops_bins(table.gflops, 10.0)
    assert len(bins) == 13 and [len(b) for b in bins] == [1] + [12] * 11 + [1]


# ------------------------------------------------------------------------------------------------- configs
def test_out_indices_rule_gives_upstreams_small_anchor_indices():
    assert map_out_indices_to_fast((9, 14, 19, 23), 12, 24) == (4, 7, 9, 11)


SNNET_CONFIGS = {  # config: (LoRA SL rank, classes, iterations)
    "ADE20K/setr_naive_snnetv2_deit3_s_l_160k.py": (16, 150, 160000),
    "ADE20K/setr_naive_snnetv2_deit3_b_l_160k.py": (4, 150, 160000),
    "COCO-Stuff-10K/setr_naive_snnetv2_deit3_s_l_80k.py": (16, 171, 80000),
    "COCO-Stuff-10K/setr_naive_snnetv2_deit3_b_l_80k.py": (4, 171, 80000),
    "COCO-Stuff-10K/setr_naive_snnetv2_deit3_b_l_80k_pet.py": (4, 171, 80000),  # + backbone LoRA (Fig. 12a)
}
BASELINES = {  # config: (anchor, width, out_indices, classes)
    "ADE20K/setr_naive_deit3_s_160k.py": ("deit3_small_patch16_224", 384, (4, 7, 9, 11), 150),
    "ADE20K/setr_naive_deit3_b_160k.py": ("deit3_base_patch16_224", 768, (4, 7, 9, 11), 150),
    "ADE20K/setr_naive_deit3_l_160k.py": ("deit3_large_patch16_224", 1024, (9, 14, 19, 23), 150),
    "COCO-Stuff-10K/setr_naive_deit3_s_80k.py": ("deit3_small_patch16_224", 384, (4, 7, 9, 11), 171),
    "COCO-Stuff-10K/setr_naive_deit3_b_80k.py": ("deit3_base_patch16_224", 768, (4, 7, 9, 11), 171),
    "COCO-Stuff-10K/setr_naive_deit3_l_80k.py": ("deit3_large_patch16_224", 1024, (9, 14, 19, 23), 171),
}


def _built_on_meta(name):
    cfg = LazyConfig.load(os.path.join(CONFIGS, name))
    for key in ("fast", "slow", "vit"):
        if key in cfg.model.backbone:
            cfg.model.backbone[key].pretrained = None
    with torch.device("meta"):
        return cfg, instantiate(cfg.model)


@pytest.mark.parametrize("name", sorted(SNNET_CONFIGS))
def test_snnet_configs_recipe(name):
    rank, classes, iterations = SNNET_CONFIGS[name]
    cfg, model = _built_on_meta(name)
    assert isinstance(model, StitchedSETR) and isinstance(model.backbone, StitchedViT)
    assert model.backbone.lora_rank == rank and model.backbone.out_indices == (9, 14, 19, 23)
    assert model.backbone.fast_out_indices == (4, 7, 9, 11) and len(model.space) == 134
    assert [h.num_classes for h in [model.decode_head, *model.auxiliary_heads]] == [classes] * 4
    assert [h.in_index for h in model.auxiliary_heads] == [0, 1, 2] and model.decode_head.in_index == 3
    assert [len(h.up_convs) for h in [model.decode_head, *model.auxiliary_heads]] == [1, 2, 2, 2]
    assert model.aux_loss_weight == 0.4 and model.crop_size == (512, 512) and model.test_stride == (341, 341)
    assert cfg.train.max_iter == iterations and cfg.dataloader.train.total_batch_size == 16
    assert cfg.snnet.ros_step_gflops == 10.0 and cfg.snnet.ls_init_images == 100
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.01, 0.9, 0.0)
    assert (cfg.lr_multiplier.max_iter, cfg.lr_multiplier.eta_min, cfg.lr_multiplier.power) == (iterations, 1e-4, 0.9)


@pytest.mark.parametrize("v1, v2", [
    ("ADE20K/setr_naive_snnetv1_deit3_s_l_160k.py", "ADE20K/setr_naive_snnetv2_deit3_s_l_160k.py"),
    ("COCO-Stuff-10K/setr_naive_snnetv1_deit3_s_l_80k.py", "COCO-Stuff-10K/setr_naive_snnetv2_deit3_s_l_80k.py"),
])
def test_snnetv1_configs_are_figure_16s_arm_fs_only_uniform_no_lora_on_the_v2_schedule(v1, v2):
    cfg, model = _built_on_meta(v1)
    assert model.backbone.space.route_types == ("anchor", "FS") and len(model.space) == 13
    assert model.space.ids == list(range(13)) and model.backbone.lora_rank == 0  # the anchors and FS keep v2's ids
    assert cfg.snnet.sampling == "uniform"
    paper = LazyConfig.load(os.path.join(CONFIGS, v2))
    assert paper.snnet.sampling == "ros" and list(paper.model.backbone.route_types) == list(ROUTE_TYPES)
    for section in ("optimizer", "lr_multiplier", "dataloader"):
        assert repr(cfg[section]) == repr(paper[section]), section  # a partial equals only itself
    assert cfg.train.max_iter == paper.train.max_iter and cfg.model.decode_head == paper.model.decode_head
    assert {k: v for k, v in cfg.snnet.items() if k != "sampling"} == {
        k: v for k, v in paper.snnet.items() if k != "sampling"}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_configs_build_one_vit(name):
    anchor, width, out_indices, classes = BASELINES[name]
    cfg, model = _built_on_meta(name)
    assert type(model) is SETR and isinstance(model.backbone, ViTBackbone) and "snnet" not in cfg
    assert cfg.model.backbone.vit.model_name == anchor and model.backbone.out_channels == width
    assert model.backbone.out_indices == out_indices
    assert [(h.in_channels, h.num_classes) for h in [model.decode_head, *model.auxiliary_heads]] == [(width, classes)] * 4


def test_head_learning_rate_is_ten_times():
    model = tiny_setr()
    factors = {name: custom_keys_lr_factor(name, {"head": 10.0}) for name, _ in model.named_parameters()}
    assert {n for n, f in factors.items() if f == 10.0} == {n for n in factors if n.startswith(("decode_head.",
                                                                                                "auxiliary_heads."))}
    assert set(factors.values()) == {1.0, 10.0}
    assert custom_keys_lr_factor("a.head_b", {"head": 2.0, "head_b": 3.0}) == 3.0  # longest key first


def test_backbone_pet_config_puts_rank_4_lora_on_frozen_anchors():
    _, model = _built_on_meta("COCO-Stuff-10K/setr_naive_snnetv2_deit3_b_l_80k_pet.py")
    _, full = _built_on_meta("COCO-Stuff-10K/setr_naive_snnetv2_deit3_b_l_80k.py")
    assert model.backbone.backbone_lora_rank == 4 and full.backbone.backbone_lora_rank == 0
    assert {n.rsplit(".", 1)[1] for n, p in model.backbone.anchors.named_parameters() if p.requires_grad} == {
        "lora_down", "lora_up"}


def test_backbone_lora_rank_of_the_tiny_config_trains_the_factors_layers_and_heads_only():
    cfg = LazyConfig.load(os.path.join(CONFIGS, "synthetic", "setr_snnetv2_tiny.py"))
    cfg.model.backbone.backbone_lora_rank = 2
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.set_stitch(13)  # through both anchors
    label = torch.randint(0, cfg.model.decode_head.num_classes, (64, 64), generator=torch.Generator().manual_seed(1))
    loss = sum(model([{"image": random_image(64, 64), "sem_seg": label}]).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    anchors_moved = {n for n in moved if n.startswith("backbone.anchors.")}
    assert anchors_moved and all(n.endswith(("lora_down", "lora_up")) for n in anchors_moved)
    assert any(n.startswith("decode_head.") for n in moved) and any(n.startswith("backbone.stitch_") for n in moved)


ALL_CONFIGS = sorted(os.path.relpath(os.path.join(d, f), CONFIGS) for d, _, files in os.walk(CONFIGS) for f in files
                     if f.endswith(".py") and os.path.basename(d) != "common")


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_configs_hold_only_their_sections_and_save_as_yaml(name, tmp_path):
    cfg = LazyConfig.load(os.path.join(CONFIGS, name))
    assert set(cfg) <= {"model", "dataloader", "optimizer", "lr_multiplier", "train", "snnet", "datasets"}
    LazyConfig.save(cfg, str(tmp_path / "config.yaml"))  # what detectron2's default_setup writes first
    assert LazyConfig.load(str(tmp_path / "config.yaml")).model.decode_head.num_classes in (150, 171)
