"""Checks of ``snnet_core.d2.app`` behaviour that segmentation's and detection's training tests share, each run
through the project's own ``train_net.py`` (``run(*KEY=VALUE)`` trains its tiny config) with the project's keys."""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Sequence, Tuple

import pytest
import torch

from snnet_core.training.sampling import UniformSampler

FS_IDS = [0, 1, 2, 3, 4]  # SN-Netv1's space: the anchors and the 3 FS stitches keep their ids of the 14


def check_backbone_lora_rank_and_ls_init_off(run: Callable[..., Any], out: str, key: str, anchors: str) -> None:
    """``key`` (the backbone LoRA rank) refuses -1 naming itself; rank 2 with ``snnet.ls_init_images=0`` is logged,
    and the checkpoint in ``out`` holds LoRA weights of the anchors (state dict names starting ``anchors``)."""
    with pytest.raises(ValueError, match=rf"{re.escape(key)}=-1 is not valid: expected an integer"):
        run("train.max_iter=1", f"{key}=-1")
    run("train.max_iter=1", "snnet.ls_init_images=0", f"{key}=2")
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert f"backbone LoRA rank 2 ({key}=2): the anchors are frozen" in log
    assert "LS init off (snnet.ls_init_images=0): the stitching layers keep PyTorch's default init" in log
    weights = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    assert any(k.startswith(anchors) and k.endswith("lora_up") for k in weights)


def check_snnetv1_space_trains_uniformly(run: Callable[..., Any], out: str, prefix: str, iterations: int,
                                         bad_route_types: Sequence[str], bad_sampling: str) -> Tuple[str, str, str]:
    """``{prefix}route_types`` and ``snnet.sampling`` refuse ``bad_route_types`` and ``bad_sampling`` naming the key;
    SN-Netv1's space (``[anchor, FS]``, uniform sampling, fully trained stitching layers) trains ``iterations``
    iterations in ``out`` drawing its 5 stitches uniformly, logged. Returns those three overrides."""
    key = f"{prefix}route_types"
    for bad, message in ((f"{key}=[{','.join(bad_route_types)}]",
                          re.escape(f"{key}={list(bad_route_types)!r}") + " is not valid: expected a list of distinct "
                          "values"),
                         (f"snnet.sampling={bad_sampling}",
                          rf"snnet.sampling='{bad_sampling}' is not valid: expected one of 'ros'")):
        with pytest.raises(ValueError, match=message):
            run("train.max_iter=2", bad)
    v1 = (f"{key}=[anchor,FS]", "snnet.sampling=uniform", f"{prefix}lora_rank=0")
    run(f"train.max_iter={iterations}", *v1)
    with open(os.path.join(out, "stitch_schedule_from_0.json")) as f:
        schedule = json.load(f)
    assert schedule["sampler"] == {"type": "UniformSampler", "seed": 0, "stitch_ids": FS_IDS}
    assert schedule["stitches"] == [UniformSampler(FS_IDS, seed=0).sample(i) for i in range(iterations)]
    with open(os.path.join(out, "log.txt")) as f:
        assert f"uniform sampling over 5 stitches (route types anchor, FS) ({key}, snnet.sampling=uniform;" in f.read()
    return v1
