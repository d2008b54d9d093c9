"""Resumable training data: the batch of iteration ``i`` (items, order and augmentation) is a pure function of
``(seed, i)``, so a resumed run sees exactly the data of the uninterrupted one, whatever the number of loader
workers.

``ResumableBatchSampler`` cuts detectron2's training stream (seeded permutations of the dataset, item ``p`` to
rank ``p % world_size``, batches grouped by aspect ratio) into batches of ``(position, index)`` pairs without
loading anything, so the first ``start_iter`` batches are skipped for free; ``PositionSeededDataset`` maps item
``index`` with every RNG seeded from ``(seed, position)``. ``build_resumable_train_loader`` puts the two in a
``DataLoader`` whose batches are lists of mapped dicts, as detectron2's ``build_detection_train_loader`` yields.
Torch only: the rank and world size come from ``torch.distributed`` (one process without a process group).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import random
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.utils.data as torchdata

logger = logging.getLogger(__name__)

__all__ = ["PositionSeededDataset", "ResumableBatchSampler", "build_resumable_train_loader", "seed_rngs",
           "seeded_rngs", "shared_random_seed"]


def _rank_and_world_size() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shared_random_seed() -> int:
    """A random seed in ``[0, 2**31)`` drawn from numpy's global RNG on rank 0 and given to every rank."""
    seed = [int(np.random.randint(2 ** 31))]
    if _rank_and_world_size()[1] > 1:
        dist.broadcast_object_list(seed, src=0)
    return seed[0]


def seed_rngs(*words: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every CUDA device) from ``words``."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


@contextlib.contextmanager
def seeded_rngs(*words: int) -> Iterator[None]:
    """``seed_rngs(*words)`` for the ``with`` block; the previous states of the three RNGs come back after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            seed_rngs(*words)
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class PositionSeededDataset(torchdata.Dataset):
    """``dataset[index]`` through ``mapper`` with every RNG seeded from ``(seed, position)``, where
    ``position`` is the item's place in the training stream: its augmentation does not depend on the
    worker that maps it, nor on what was mapped before. A ``None`` from the mapper (item skipped) is
    replaced by another item, drawn from the same seed (as detectron2's ``MapDataset`` does at random)."""

    def __init__(self, dataset: Sequence[dict], mapper: Callable[[dict], Optional[dict]], seed: int):
        self.dataset, self.mapper, self.seed = dataset, mapper, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> dict:
        position, index = key
        for attempt in itertools.count():
            with seeded_rngs(self.seed, position, attempt):
                mapped = self.mapper(self.dataset[index])
                if mapped is not None:
                    return mapped
                if attempt >= 10:
                    raise RuntimeError(f"the training mapper skipped 10 items in a row (last: dataset item {index}, "
                                       f"{self.dataset[index].get('file_name')}); check the mapper and the data")
                index = random.randrange(len(self.dataset))


class ResumableBatchSampler(torchdata.Sampler):
    """This rank's batches of ``(position, index)`` pairs from detectron2's training stream.

    As ``TrainingSampler`` + ``AspectRatioGroupedDataset``: an infinite stream of seeded permutations of the
    dataset, item ``p`` of it to rank ``p % world_size``, each rank grouping its items into batches of
    landscape (w > h) or portrait images. Everything is computed from the indices and image sizes alone, so
    the first ``start_iter`` batches are skipped without loading them. With ``aspect_ratio_grouping`` the
    dataset's dicts need ``width`` and ``height``.
    """

    def __init__(self, dataset: Sequence[dict], batch_size: int, seed: int, start_iter: int = 0,
                 aspect_ratio_grouping: bool = True):
        self.size, self.batch_size, self.seed, self.start_iter = len(dataset), batch_size, int(seed), int(start_iter)
        self.group = ([0 if d["width"] > d["height"] else 1 for d in dataset] if aspect_ratio_grouping
                      else [0] * self.size)
        self.rank, self.world_size = _rank_and_world_size()

    def _stream(self) -> Iterator[Tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed)
        for epoch in itertools.count():
            start = epoch * self.size
            yield from enumerate(torch.randperm(self.size, generator=generator).tolist(), start)

    def _batches(self) -> Iterator[List[Tuple[int, int]]]:
        buckets: List[List[Tuple[int, int]]] = [[], []]
        for position, index in itertools.islice(self._stream(), self.rank, None, self.world_size):
            bucket = buckets[self.group[index]]
            bucket.append((position, index))
            if len(bucket) == self.batch_size:
                yield bucket[:]
                del bucket[:]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        return itertools.islice(self._batches(), self.start_iter, None)


def _as_list(batch: List[dict]) -> List[dict]:
    return batch


def build_resumable_train_loader(
    dataset: Sequence[dict],
    mapper: Callable[[dict], Optional[dict]],
    total_batch_size: int,
    *,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    seed: Optional[int] = None,
    start_iter: int = 0,
) -> torchdata.DataLoader:
    """detectron2's ``build_detection_train_loader`` whose iteration ``i`` batch is a pure function of
    ``(seed, i)``: yields, from iteration ``start_iter`` on, lists of ``total_batch_size / world_size``
    mapped dicts. ``seed=None`` draws one shared by all ranks (pass it again to resume)."""
    world_size = _rank_and_world_size()[1]
    if total_batch_size <= 0 or total_batch_size % world_size:
        raise ValueError(f"dataloader.train.total_batch_size={total_batch_size} must be a positive multiple of the "
                         f"number of processes ({world_size})")
    seed = shared_random_seed() if seed is None else seed
    sampler = ResumableBatchSampler(dataset, total_batch_size // world_size, seed, start_iter, aspect_ratio_grouping)
    logger.info("training data: seed %d, batch %d per process, from iteration %d", seed, sampler.batch_size,
                start_iter)
    # its own generator: starting the iterator (at the first iteration run) must not draw from torch's global RNG
    return torchdata.DataLoader(PositionSeededDataset(dataset, mapper, seed), batch_sampler=sampler,
                                num_workers=num_workers, collate_fn=_as_list,
                                generator=torch.Generator().manual_seed(seed))
