"""Stitching layers: LS solution equals the pseudo-inverse, beats random init, accumulates memory-flat;
LoRA SL starts at the LS solution and merges exactly."""
import gc
import weakref

import pytest
import torch

from snnet_core import LeastSquaresAccumulator, StitchingLayer, ls_init_stitching_layers
from snnet_core.training.ls_init import calibration_pairs, describe_ls_init, reconstruction_error
from tests.conftest import tiny_snnet


def test_accumulated_solution_equals_pinv_solve():
    torch.manual_seed(0)
    x = torch.randn(500, 12, dtype=torch.float64)
    y = x @ torch.randn(12, 7, dtype=torch.float64) + 0.1 * torch.randn(500, 7, dtype=torch.float64) + 3.0
    acc = LeastSquaresAccumulator(12, 7)
    for chunk_x, chunk_y in zip(x.split(64), y.split(64)):  # batched accumulation
        acc.update(chunk_x.float(), chunk_y.float())
    weight, bias = acc.solve()
    xa = torch.cat([x.float().double(), torch.ones(500, 1, dtype=torch.float64)], 1)
    reference = torch.linalg.pinv(xa) @ y.float().double()
    torch.testing.assert_close(weight, reference[:-1].T, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(bias, reference[-1], rtol=1e-7, atol=1e-8)
    residual = torch.mean((xa @ reference - y.float().double()) ** 2)
    assert acc.mean_squared_error(weight, bias) == pytest.approx(float(residual), rel=1e-6)


def test_rank_deficient_features_still_match_pinv():
    torch.manual_seed(1)
    base = torch.randn(200, 4, dtype=torch.float64)
    x = torch.cat([base, base[:, :2] * 2.0], 1)  # rank 4 of 6 columns
    y = torch.randn(200, 3, dtype=torch.float64)
    acc = LeastSquaresAccumulator(6, 3)
    acc.update(x, y)
    weight, bias = acc.solve()
    xa = torch.cat([x, torch.ones(200, 1, dtype=torch.float64)], 1)
    reference = torch.linalg.pinv(xa) @ y
    torch.testing.assert_close(torch.cat([weight.T, bias[None]]), reference, rtol=1e-6, atol=1e-8)


def test_accumulator_rejects_bad_shapes_and_empty_solve():
    acc = LeastSquaresAccumulator(4, 5)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        acc.update(torch.randn(3, 5), torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="calibration image"):
        acc.solve()


def low_rank_patch_images(n: int, size: int = 64, rank: int = 6, seed: int = 0) -> torch.Tensor:
    """Images whose 16x16 patches all lie in one ``rank``-dim subspace, so the two anchors' embeddings are
    linear functions of the same latent and a linear stitching map between them exists."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, 3 * 16 * 16, generator=torch.Generator().manual_seed(123))
    grid = size // 16
    patches = torch.randn(n, grid, grid, rank, generator=g) @ basis  # (n, gh, gw, 3*16*16)
    return patches.reshape(n, grid, grid, 3, 16, 16).permute(0, 3, 1, 4, 2, 5).reshape(n, 3, size, size)


def test_ls_init_beats_default_init_and_matches_features():
    net = tiny_snnet(lora_rank=0, img_size=64).eval()
    calib = low_rank_patch_images(8, seed=0)
    held_out = low_rank_patch_images(4, seed=1)
    before = {name: reconstruction_error(net.get_submodule(name), x, y)
              for name, x, y in calibration_pairs(net, held_out)}
    errors = ls_init_stitching_layers(net, calib.split(2), num_images=8, progress=False)
    assert set(errors) == set(before) and len(errors) == 4 + 3
    for name, x, y in calibration_pairs(net, held_out):
        assert reconstruction_error(net.get_submodule(name), x, y) < 0.5 * before[name], name
    # the loaded solution fits the calibration features as well as a pseudo-inverse solve on them. These
    # features are nearly rank-deficient (condition number ~1e7), so the fits are compared, not the weights
    # (exact equality on well-conditioned features is tested above).
    for name, x, y in calibration_pairs(net, calib):
        layer = net.get_submodule(name)
        xa = torch.cat([x.reshape(-1, x.shape[-1]).double(), torch.ones(x.shape[0] * x.shape[1], 1).double()], 1)
        target = y.reshape(-1, y.shape[-1]).double()
        pinv_mse = float(((xa @ (torch.linalg.pinv(xa) @ target) - target) ** 2).mean())
        ls_mse = reconstruction_error(layer, x, y)
        assert ls_mse <= pinv_mse + 1e-4 * float(target.pow(2).mean()), name
        assert errors[name] == pytest.approx(ls_mse, rel=1e-3, abs=1e-9)


def test_ls_init_holds_one_batch_at_a_time_and_stops_at_num_images():
    net = tiny_snnet(lora_rank=0).eval()
    alive, served = [], []

    def batches():
        for _ in range(10):
            batch = torch.randn(2, 3, 32, 32)
            served.append(batch.shape[0])
            # earlier batches (and the features computed from them) must have been released
            gc.collect()
            assert all(ref() is None for ref in alive), "LS init kept an earlier calibration batch alive"
            alive.append(weakref.ref(batch))
            yield batch
            del batch

    ls_init_stitching_layers(net, batches(), num_images=5, progress=False)
    assert sum(served) == 6  # 3 batches of 2 were needed for 5 images, no more were drawn


def test_ls_init_of_n_images_feeds_n_images_of_tokens_to_every_layer(monkeypatch):
    """SN-Netv1 supplementary F's sample counts: each layer's normal equations hold exactly N images' tokens."""
    import snnet_core.training.ls_init as ls_init

    made = []

    class Recording(LeastSquaresAccumulator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(ls_init, "LeastSquaresAccumulator", Recording)
    net = tiny_snnet().eval()
    for n in (1, 5, 8):
        made.clear()
        ls_init_stitching_layers(net, torch.randn(10, 3, 32, 32).split(2), num_images=n, progress=False)
        assert len(made) == len(net.stitch_s2l) + len(net.stitch_l2s)
        assert {acc.num_rows for acc in made} == {n * (1 + 2 * 2)}  # 32x32 at patch 16: 4 patches + cls token


def test_ls_init_of_0_images_keeps_the_default_init_and_reads_nothing():
    torch.manual_seed(0)
    net = tiny_snnet(lora_rank=0)
    torch.manual_seed(0)
    default = tiny_snnet(lora_rank=0)  # the same draws: PyTorch's default initialisation of every layer

    def unread():
        raise AssertionError("LS init with 0 images read the calibration data")
        yield

    assert ls_init_stitching_layers(net, unread(), num_images=0, progress=False) == {}
    for (name, p), q in zip(net.named_parameters(), default.parameters()):
        assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="num_images must be an integer >= 0"):
        ls_init_stitching_layers(net, unread(), num_images=-1, progress=False)


def test_describe_ls_init_names_the_key_and_the_default_init():
    assert describe_ls_init(0, "train.ls_init_images") == (
        "LS init off (train.ls_init_images=0): the stitching layers keep PyTorch's default initialisation "
        "(nn.Linear's Kaiming-uniform weights, uniform biases)")
    assert describe_ls_init(50, "snnet.ls_init_images") == (
        "LS init of the stitching layers on 50 training images (snnet.ls_init_images=50)")


def test_ls_init_with_empty_loader_fails():
    with pytest.raises(RuntimeError, match="no calibration images"):
        ls_init_stitching_layers(tiny_snnet(), [], num_images=4, progress=False)


def test_ls_init_refuses_non_finite_calibration_images_and_features():
    """NaN calibration images used to give NaN stitching weights without a word."""
    net = tiny_snnet(lora_rank=0).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randn(6, 3, 32, 32)
    images[4, 1, 7, 7] = float("nan")
    with pytest.raises(ValueError, match=r"calibration images \[4\] .* hold NaN or inf values"):
        ls_init_stitching_layers(net, images.split(2), num_images=6, progress=False)
    images[4, 1, 7, 7] = float("inf")
    with pytest.raises(ValueError, match=r"calibration images \[4\]"):
        ls_init_stitching_layers(net, images.split(2), num_images=6, progress=False)
    with torch.no_grad():  # finite images, but an anchor block produces inf: the first layer fed by it is named
        net.anchors[1].blocks[3].mlp.fc2.bias.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match=r"stitching layer stitch_s2l.1 \(fast block 1 -> slow block 3\): "
                                                 r"the target features of calibration images 0..1 are NaN or inf"):
        ls_init_stitching_layers(net, torch.randn(6, 3, 32, 32).split(2), num_images=6, progress=False)
    for name, value in net.state_dict().items():  # nothing was loaded into the stitching layers
        if name.startswith("stitch_"):
            assert torch.equal(value, before[name]), name


def test_lora_starts_at_ls_solution_and_merges_exactly():
    torch.manual_seed(0)
    layer = StitchingLayer(16, 24, rank=4)
    weight, bias = torch.randn(24, 16), torch.randn(24)
    layer.load_solution(weight, bias)
    x = torch.randn(3, 5, 16)
    assert torch.count_nonzero(layer.delta_weight()) == 0
    torch.testing.assert_close(layer(x), x @ weight.T + bias)
    with torch.no_grad():
        layer.lora_up.normal_()  # as after some training
    merged = layer.merged()
    assert isinstance(merged, torch.nn.Linear)
    assert torch.count_nonzero(layer.delta_weight()) > 0
    torch.testing.assert_close(merged(x), layer(x), rtol=1e-5, atol=1e-5)


def test_lora_trains_only_the_update_and_rank_zero_trains_everything():
    lora, full = StitchingLayer(16, 24, rank=4), StitchingLayer(16, 24, rank=0)
    assert {n for n, p in lora.named_parameters() if p.requires_grad} == {"bias", "lora_down", "lora_up"}
    assert {n for n, p in full.named_parameters() if p.requires_grad} == {"weight", "bias"}
    lora(torch.randn(2, 16)).sum().backward()
    assert lora.weight.grad is None and lora.lora_up.grad is not None
    with pytest.raises(ValueError, match="rank"):
        StitchingLayer(4, 8, rank=5)
    with pytest.raises(ValueError, match="do not match"):
        full.load_solution(torch.zeros(16, 24), torch.zeros(24))


def _train_update(layer: StitchingLayer, x: torch.Tensor, target: torch.Tensor, steps: int) -> torch.Tensor:
    """AdamW on a regression target; returns the low-rank update ``s * B A`` reached."""
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(layer(x), target).backward()
        opt.step()
    return layer.delta_weight().detach()


def test_lora_sl_scale_and_init_follow_upstream():
    """SN-Netv2's LoRA Linear: update scaled by alpha / r with alpha = 1, A ~ kaiming_uniform(a=sqrt(5)) (that is
    U(-1/sqrt(D_in), 1/sqrt(D_in))), B = 0. Trained side by side with a re-implementation of that layer from the
    same A, B and W, ours follows the same trajectory; with the former scale 1 it would move several times faster."""
    torch.manual_seed(0)
    layer = StitchingLayer(384, 1024, rank=16)
    assert layer.scaling == pytest.approx(1 / 16)
    assert StitchingLayer(384, 1024, rank=16, alpha=4.0).scaling == pytest.approx(0.25)
    bound = 1 / 384 ** 0.5
    a = layer.lora_down.detach()
    assert a.abs().max() <= bound and a.abs().max() > 0.99 * bound  # uniform over the whole interval
    assert a.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.03)  # not a normal of std 1/sqrt(D_in)
    assert torch.count_nonzero(layer.lora_up) == 0
    with pytest.raises(ValueError, match="alpha must be positive"):
        StitchingLayer(8, 8, rank=2, alpha=0.0)

    torch.manual_seed(1)
    small = StitchingLayer(32, 48, rank=4)
    small.load_solution(torch.randn(48, 32) / 32 ** 0.5, torch.zeros(48))
    x, target = torch.randn(256, 32), torch.randn(256, 48)

    class UpstreamLoRALinear(torch.nn.Module):  # y = x W^T + b + (x A^T B^T) * alpha / r, W frozen
        def __init__(self, ref: StitchingLayer, alpha: float):
            super().__init__()
            self.weight = torch.nn.Parameter(ref.weight.detach().clone(), requires_grad=False)
            self.bias = torch.nn.Parameter(ref.bias.detach().clone())
            self.lora_A = torch.nn.Parameter(ref.lora_down.detach().clone())
            self.lora_B = torch.nn.Parameter(ref.lora_up.detach().clone())
            self.scaling = alpha / ref.rank

        def forward(self, inputs):
            return inputs @ self.weight.T + self.bias + (inputs @ self.lora_A.T @ self.lora_B.T) * self.scaling

        def delta_weight(self):
            return self.lora_B @ self.lora_A * self.scaling

    reference = UpstreamLoRALinear(small, alpha=1.0)
    scale_one = UpstreamLoRALinear(small, alpha=4.0)  # the scale this project used before
    ours = _train_update(small, x, target, 100)
    theirs = _train_update(reference, x, target, 100)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    assert _train_update(scale_one, x, target, 100).norm() > 2 * theirs.norm()
