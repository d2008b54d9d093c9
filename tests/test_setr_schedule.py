"""SETR learning-rate schedule (projects/snnet_setr/configs/common/schedule.py): mmengine's PolyLR(eta_min=1e-4,
power=0.9) per param group in detectron2's trainer, as train_net.py builds it, and its exact --resume."""
import itertools
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import HookBase, SimpleTrainer, hooks

from projects.snnet_setr.optim import PolyLR
from projects.snnet_setr.train_net import APP
from snnet_core.d2.app import build_lr_scheduler
from snnet_core.d2.checkpoint import PeriodicCheckpointer, StrictDetectionCheckpointer
from snnet_core.io.config_io import ConfigError

SCHEDULE = os.path.join(os.path.dirname(__file__), "..", "projects", "snnet_setr", "configs", "common",
                        "schedule.py")
TINY = os.path.join(os.path.dirname(SCHEDULE), "..", "synthetic", "setr_snnetv2_tiny.py")
MAX_ITER = 11
ETA_MIN, POWER = 1e-4, 0.9


class TinySegmentor(torch.nn.Module):
    """A backbone (lr x1) and a ``decode_head`` (lr x10 under the config's ``custom_keys={"head": 10}``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone, self.decode_head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

    def forward(self, x):
        return {"loss": self.decode_head(self.backbone(x)).square().mean()}


class RecordLR(HookBase):
    """The rate of each param group (keyed by its initial rate) in the iterations it trains."""

    def __init__(self):
        self.lrs = {}

    def before_step(self):
        self.lrs[self.trainer.iter] = {g["initial_lr"]: g["lr"] for g in self.trainer.optimizer.param_groups}


def run(max_iter, start_iter=0, stop_iter=None, output_dir="", resume=False):
    """``train_net.py``'s optimizer, LR hook and checkpointing (``D2App.do_train``'s order) on ``TinySegmentor``
    over ``schedule.py`` with ``train.max_iter=max_iter``, trained up to ``stop_iter``."""
    cfg = LazyConfig.load(SCHEDULE)
    cfg.train.max_iter = max_iter
    model = TinySegmentor()
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    trainer = SimpleTrainer(model, itertools.repeat(torch.ones(2, 4)), optim)
    checkpointer = StrictDetectionCheckpointer(model, output_dir, trainer=trainer)
    record = RecordLR()
    trainer.register_hooks([hooks.LRScheduler(scheduler=build_lr_scheduler(cfg, optim)),
                            PeriodicCheckpointer(checkpointer, period=max_iter) if output_dir else None, record])
    if resume:
        checkpointer.resume_or_load("", resume=True)
        start_iter = trainer.iter + 1
    trainer.train(start_iter, max_iter if stop_iter is None else stop_iter)
    return record.lrs


def mmengine_poly(lr0, t, max_iter):
    """mmengine's PolyParamScheduler (begin=0, end=max_iter) after ``t`` steps, by its chained rule: step ``s``
    multiplies ``lr - eta_min`` by ``(1 - 1 / (total_iters - s + 1)) ** power``, ``total_iters = end - begin - 1``."""
    total_iters, lr = max_iter - 1, lr0
    for step in range(1, t + 1):
        lr = (lr - ETA_MIN) * (1 - 1 / (total_iters - step + 1)) ** POWER + ETA_MIN
    return lr


def test_every_param_group_decays_to_mmengines_absolute_floor():
    lrs = run(MAX_ITER)
    assert sorted(lrs) == list(range(MAX_ITER)) and sorted(lrs[0]) == [0.01, 0.1]  # backbone x1, head x10
    for t in (0, 1, 4, 7, 9, MAX_ITER - 1):
        for lr0, lr in lrs[t].items():
            closed_form = (lr0 - ETA_MIN) * (1 - t / (MAX_ITER - 1)) ** POWER + ETA_MIN
            assert lr == pytest.approx(closed_form, rel=1e-12)
            assert lr == pytest.approx(mmengine_poly(lr0, t, MAX_ITER), rel=1e-9)
    assert lrs[MAX_ITER - 1] == {0.01: ETA_MIN, 0.1: ETA_MIN}  # the last iteration, in both groups
    assert ETA_MIN < lrs[MAX_ITER - 2][0.1] < 10 * lrs[MAX_ITER - 2][0.01]  # the groups' ratio is not kept


def test_resume_continues_the_schedule_from_the_checkpointed_scheduler(tmp_path):
    whole = run(MAX_ITER)
    run(MAX_ITER, stop_iter=5, output_dir=str(tmp_path))  # killed after iteration 4's checkpoint
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert saved["iteration"] == 4 and saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 5
    resumed = run(MAX_ITER, output_dir=str(tmp_path), resume=True)
    assert sorted(resumed) == list(range(5, MAX_ITER))
    assert resumed == {t: whole[t] for t in range(5, MAX_ITER)}


def test_single_iteration_schedule_keeps_the_initial_rates():
    optim = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = PolyLR(optim, max_iter=1, eta_min=ETA_MIN, power=POWER)  # mmengine: total_iters 0, never updated
    assert optim.param_groups[0]["lr"] == 0.01
    optim.step()
    scheduler.step()
    assert optim.param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize("key,value", [("lr_multiplier.power", 0.0), ("lr_multiplier.eta_min", -1e-4),
                                       ("lr_multiplier.max_iter", 0)])
def test_train_net_refuses_a_bad_schedule_value_naming_its_key(key, value):
    cfg = LazyConfig.load(TINY)
    APP.check_config(cfg, True, TINY)  # the recipe passes
    cfg[key.split(".")[0]][key.split(".")[1]] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        APP.check_config(cfg, True, TINY)
