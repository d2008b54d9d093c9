"""snnet_core.distributed: the process-group helpers of both projects, in one process (the projects' two-process
tests run them under detectron2's launch and torchrun)."""
import pytest
import torch
import torch.distributed as dist

from snnet_core.distributed import (
    DistContext, barrier, broadcast_object, destroy_process_groups, gather_objects, init_distributed, run_on_main,
)


def test_one_process_needs_no_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistContext(0, 1, 0, torch.device("cpu")) and ctx.is_main and not ctx.enabled
    assert not dist.is_initialized()
    barrier(ctx)
    assert broadcast_object(ctx, {"a": 1}) == {"a": 1} and gather_objects(ctx, 3) == [3]
    destroy_process_groups()  # no group: nothing to do


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_without_cuda_is_a_user_error():
    with pytest.raises(ValueError, match="train.device=cuda but CUDA is not available: pass train.device=cpu"):
        init_distributed("cuda")


def test_run_on_main_returns_the_result_or_raises_the_error_of_the_main_process():
    assert run_on_main(lambda: 42) == 42
    with pytest.raises(KeyError, match="missing"):
        run_on_main(lambda: {}["missing"])
