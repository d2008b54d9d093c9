"""What classification's and depth's ``model.backbone_lora_rank`` / ``train.ls_init_images`` tests share: spies on
LS init and on the weights a run starts from, and the checks of their log lines and of the stitching layers."""
from __future__ import annotations

from types import ModuleType
from typing import Collection, Dict, List, Tuple

import torch

import snnet_core.training.run_state as run_state


def spy_on_ls_init(monkeypatch, training: ModuleType) -> Tuple[List[int], Dict[str, torch.Tensor]]:
    """``(fed, start)``: the batch sizes LS init is fed, and the state dict when ``training.build_optimizer`` is
    called (before LS init), filled in as the run goes."""
    fed: List[int] = []
    start: Dict[str, torch.Tensor] = {}
    real_ls_init, real_optimizer = run_state.ls_init_stitching_layers, training.build_optimizer

    def counting_ls_init(snnet, batches, num_images, **kwargs):
        return real_ls_init(snnet, (fed.append(b.shape[0]) or b for b in batches), num_images=num_images, **kwargs)

    def snapshot_then_optimizer(model, recipe):
        start.update({k: v.clone() for k, v in model.state_dict().items()})
        return real_optimizer(model, recipe)

    monkeypatch.setattr(run_state, "ls_init_stitching_layers", counting_ls_init)
    monkeypatch.setattr(training, "build_optimizer", snapshot_then_optimizer)
    return fed, start


def check_backbone_lora_log(log: str, rank: int) -> None:
    """The run's log says whether the anchors are frozen (``model.backbone_lora_rank=rank``)."""
    if rank:
        assert f"backbone LoRA rank {rank} (model.backbone_lora_rank={rank}): the anchors are frozen" in log
    else:
        assert "backbone LoRA off (model.backbone_lora_rank=0): the anchors train in full" in log


def check_ls_init(log: str, images: int, fed: List[int], moved: Collection[str], stitch_weights: List[str]) -> None:
    """``train.ls_init_images=images`` fed LS init that many images and replaced every stitching weight, or (0) is
    logged as off and left them at PyTorch's default init (``moved``: the names of the weights that changed)."""
    if images:
        assert f"LS init of the stitching layers on {images} training images (train.ls_init_images={images})" in log
        assert sum(fed) == images and set(stitch_weights) <= set(moved)
    else:
        assert "LS init off (train.ls_init_images=0): the stitching layers keep PyTorch's default init" in log
        assert fed == [] and not set(moved) & set(stitch_weights)  # frozen under LoRA SL: still the default init
