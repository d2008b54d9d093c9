"""Shared test set-up: offline hub, single-threaded torch (2-core CI), tiny anchors."""
import importlib.util
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from snnet_core import StitchedViT, build_anchor  # noqa: E402

# tiny models: threads only add overhead, and CI has 2 cores; SNNET_TEST_THREADS=2 runs the in-process tests as a
# 2-thread machine would (the suite must pass with 1 and 2)
torch.set_num_threads(int(os.environ.get("SNNET_TEST_THREADS", "1")))

TINY_FAST = dict(embed_dim=32, depth=4, num_heads=2)
TINY_SLOW = dict(embed_dim=48, depth=8, num_heads=3)


def tiny_anchor(img_size=32, num_classes=0, **overrides):
    """A tiny DeiT3-style ViT (timm ``deit3_small_patch16_224`` with smaller width/depth)."""
    cfg = dict(TINY_FAST)
    cfg.update(overrides)
    return build_anchor("deit3_small_patch16_224", img_size=img_size, num_classes=num_classes, **cfg)


def tiny_snnet(lora_rank=4, out_indices=(1, 3, 5, 7), img_size=32, num_classes=0, seed=0, anchor_kwargs=None,
               **kwargs):
    """4-block/32-wide fast + 8-block/48-wide slow anchors, patch 16 (``anchor_kwargs``: more timm arguments)."""
    torch.manual_seed(seed)
    fast = tiny_anchor(img_size, num_classes, **TINY_FAST, **(anchor_kwargs or {}))
    slow = tiny_anchor(img_size, num_classes, **TINY_SLOW, **(anchor_kwargs or {}))
    return StitchedViT(fast, slow, lora_rank=lora_rank, out_indices=out_indices, **kwargs)


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (``benchmarks/`` is not an installed package)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def snnet():
    return tiny_snnet().eval()


@pytest.fixture
def drawn_figures(monkeypatch):
    """The figures matplotlib draws in the test (``snnet_core.evaluation.report``'s plots), kept open (``plt.close``
    intercepted) for the test to read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    yield figures
    monkeypatch.undo()
    for fig in figures:
        plt.close(fig)
