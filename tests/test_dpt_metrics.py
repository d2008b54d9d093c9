"""Eigen crop, depth metrics and the SI-log loss on hand-computed cases."""
import math

import pytest
import torch

from projects.snnet_dpt.loss import SILogLoss
from projects.snnet_dpt.metrics import (
    METRIC_NAMES, DepthMetricAccumulator, depth_metrics, eigen_crop_box, evaluation_mask,
)

LN2 = math.log(2)


def test_eigen_crop_box():
    assert eigen_crop_box(480, 640) == (45, 471, 41, 601)
    assert eigen_crop_box(240, 320) == (23, 236, 21, 301)  # 22.5, 235.5, 20.5, 300.5 rounded half up


def test_evaluation_mask_uses_crop_and_depth_range():
    gt = torch.full((480, 640), 3.0)
    gt[100, 100] = 0.0  # no measurement
    gt[200, 200] = 10.0  # at the cap: excluded (open interval)
    mask = evaluation_mask(gt, 1e-3, 10.0)
    assert mask.sum() == (471 - 45) * (601 - 41) - 2
    assert not mask[44, 300] and mask[45, 300] and not mask[471, 300] and mask[470, 300]
    assert not mask[300, 40] and mask[300, 41] and not mask[300, 601] and mask[300, 600]
    assert evaluation_mask(gt, 1e-3, 10.0, eigen_crop=False).sum() == 480 * 640 - 2


def test_metric_values_by_hand():
    gt = torch.tensor([1.0, 2.0, 4.0])
    pred = torch.tensor([2.0, 2.0, 2.0])  # ratios 2, 1, 2; log errors ln2, 0, -ln2
    m = dict(zip(METRIC_NAMES, depth_metrics(pred, gt).tolist()))
    expected = {
        "a1": 1 / 3, "a2": 1 / 3, "a3": 1 / 3,  # 2 > 1.25**3 = 1.953
        "abs_rel": (1 + 0 + 0.5) / 3, "sq_rel": (1 + 0 + 1) / 3, "rmse": math.sqrt(5 / 3),
        "rmse_log": LN2 * math.sqrt(2 / 3), "log10": 2 * math.log10(2) / 3, "silog": 100 * LN2 * math.sqrt(2 / 3),
    }
    for name, value in expected.items():
        assert m[name] == pytest.approx(value, rel=1e-9), name
    close = dict(zip(METRIC_NAMES, depth_metrics(gt * 1.2, gt).tolist()))
    assert close["a1"] == 1.0 and close["silog"] == pytest.approx(0.0, abs=1e-6)
    assert close["rmse_log"] == pytest.approx(math.log(1.2))


def test_accumulator_averages_per_image_clips_and_crops():
    gt = torch.full((2, 1, 480, 640), 2.0)
    pred = gt.clone()
    pred[1, 0, 45:55, 41:601] = 4.0  # 10 of 426 cropped rows wrong in image 1
    pred[1, 0, :45] = 100.0  # outside the Eigen crop: ignored
    acc = DepthMetricAccumulator()
    acc.update(pred, gt)
    out = acc.compute()
    assert acc.count == 2
    assert out["a1"] == pytest.approx((1.0 + 416 / 426) / 2)
    assert out["abs_rel"] == pytest.approx((0.0 + 10 / 426) / 2)
    # clipping to [1e-3, 10]: a prediction of 50 m against 9 m counts as 10 m
    acc = DepthMetricAccumulator(eigen_crop=False)
    acc.update(torch.tensor([[[[50.0, float("nan")]]]]), torch.tensor([[[[9.0, 0.0]]]]))
    assert acc.compute()["abs_rel"] == pytest.approx(1 / 9)
    # an image without valid ground truth is left out of the average
    acc.update(torch.ones(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    assert acc.count == 1
    with pytest.raises(RuntimeError, match="no image"):
        DepthMetricAccumulator().compute()


def test_silog_loss_by_hand_and_warmup():
    loss = SILogLoss(variance_focus=0.15, warmup_iters=100, eps=0.0)
    gt = torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 1, 3)  # last pixel invalid
    pred = torch.tensor([1.0, 2.0, 5.0]).view(1, 1, 1, 3).requires_grad_()
    # g = [0, ln2]: unbiased variance ln2^2 / 2, mean ln2 / 2
    after = loss(pred, gt, iteration=100)
    assert after.item() == pytest.approx(math.sqrt(LN2 ** 2 / 2 + 0.15 * LN2 ** 2 / 4))
    during = loss(pred, gt, iteration=99)
    assert during.item() == pytest.approx(math.sqrt(0.15) * LN2 / 2)
    after.backward()
    assert pred.grad[0, 0, 0, 2] == 0 and pred.grad[0, 0, 0, 1] > 0
    scaled = loss(2 * gt.clamp_min(1.0), torch.ones(1, 1, 1, 3), iteration=500)
    assert scaled.item() == pytest.approx(math.sqrt(0.15) * LN2)  # scale error: only the mean term
    empty = SILogLoss()(pred, torch.zeros_like(gt), iteration=0)
    assert empty.item() == 0.0 and empty.requires_grad
