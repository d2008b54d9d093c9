"""snnet_core.training.data_order: the training stream of (position, index) batches, per-position seeding and the
resumable loader (torch only)."""
import itertools
import random

import numpy as np
import pytest
import torch

from snnet_core.training import data_order
from snnet_core.training.data_order import PositionSeededDataset, ResumableBatchSampler, build_resumable_train_loader

DATASET = [{"id": i, "width": 8 if i % 3 else 4, "height": 6} for i in range(10)]  # every third one portrait


def noisy_mapper(item):
    """The item with draws from the three global RNGs an augmentation might use."""
    return {"id": item["id"], "draws": (random.random(), float(np.random.rand()), float(torch.rand(())))}


def test_a_resumed_loader_yields_the_uninterrupted_batches_whatever_the_global_rngs():
    def batches(start_iter, count):
        loader = build_resumable_train_loader(DATASET, noisy_mapper, 3, seed=7, start_iter=start_iter)
        return [[(d["id"], d["draws"]) for d in batch] for batch in itertools.islice(loader, count)]

    torch.manual_seed(0)
    np.random.seed(0)
    uninterrupted = batches(0, 8)
    torch.manual_seed(1)
    np.random.seed(1)
    assert batches(5, 3) == uninterrupted[5:]
    ids = [d[0] for batch in uninterrupted for d in batch]
    landscape = [i for i in ids if DATASET[i]["width"] > DATASET[i]["height"]]
    assert sorted(set(ids)) == list(range(10)) and len(set(landscape)) == 6
    assert all(len({DATASET[d[0]]["width"] > 6 for d in batch}) == 1 for batch in uninterrupted)  # grouped


def test_ranks_take_alternate_positions_of_one_stream(monkeypatch):
    def positions(rank):
        monkeypatch.setattr(data_order, "_rank_and_world_size", lambda: (rank, 2))
        sampler = ResumableBatchSampler(DATASET, 2, seed=3, aspect_ratio_grouping=False)
        return [p for batch in itertools.islice(iter(sampler), 5) for p, _ in batch]

    assert positions(0) == list(range(0, 20, 2)) and positions(1) == list(range(1, 20, 2))
    with pytest.raises(ValueError, match="total_batch_size=3 must be a positive multiple of the number of processes"):
        build_resumable_train_loader(DATASET, noisy_mapper, 3, seed=0)


def test_a_skipped_item_is_replaced_by_one_drawn_from_its_position():
    dataset = PositionSeededDataset(DATASET, lambda item: None if item["id"] == 4 else noisy_mapper(item), seed=0)
    replaced = dataset[(12, 4)]
    assert replaced["id"] != 4 and dataset[(12, 4)] == replaced
    with pytest.raises(RuntimeError, match="skipped 10 items in a row"):
        PositionSeededDataset(DATASET, lambda item: None, seed=0)[(0, 0)]
