"""``benchmarks/gpu_check.py``: exits 0 with one line where there is no CUDA, and its training, latency and
merge functions run on CPU with the tiny synthetic configs (their GPU path is the same code on another device)."""
import math
import os
import subprocess
import sys

import torch

from benchmarks import gpu_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPTH_TINY = os.path.join(REPO, "projects", "snnet_dpt", "configs", "synthetic", "dpt_snnetv2_tiny.py")
DETECTION_TINY = os.path.join(REPO, "projects", "snnet_vitdet", "configs", "synthetic", "mask_rcnn_snnetv2_tiny.py")
CPU = torch.device("cpu")


def test_without_cuda_the_check_says_so_in_one_line_and_exits_0():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_check.py")], capture_output=True,
                         text=True, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "gpu_check: no CUDA device visible (torch.cuda.is_available() is False): nothing to check here"]
    assert run.stderr == ""


def test_the_stitches_trained_and_timed():
    space = gpu_check.StitchSpace(12, 24)
    assert gpu_check.trained_stitches(space) == [1, space.ids[67], 0]
    timed = gpu_check.timed_stitches(space, 4)
    assert timed[:2] == [0, 1] and len(set(timed)) == 4 and all(t in space for t in timed)
    assert gpu_check.timed_stitches(space, 2) == [0, 1]


def test_depth_training_steps_and_latency_run_on_cpu_with_the_tiny_config():
    model, cfg = gpu_check.depth_model(DEPTH_TINY, CPU)
    check = gpu_check.depth_train_steps(model, cfg, CPU, steps=3, batch=2, amp=False)
    assert check.finite and math.isfinite(check.loss) and check.peak_gib is None
    assert check.median_s > 0 and check.max_s >= check.median_s
    stitches = gpu_check.timed_stitches(model.backbone.space, 3)
    ms = gpu_check.depth_latencies(model, cfg, stitches, CPU, amp=False, runs=1, warmup=0)
    assert list(ms) == stitches and all(v > 0 for v in ms.values())


def test_detection_training_steps_and_latency_run_on_cpu_with_the_tiny_config():
    model, cfg = gpu_check.detection_model(DETECTION_TINY, CPU)
    check = gpu_check.detection_train_steps(model, cfg, CPU, steps=3, amp=False)
    assert check.finite and math.isfinite(check.loss) and check.peak_gib is None
    stitches = gpu_check.timed_stitches(gpu_check.stitched_detector_backbone(model).space, 3)
    ms = gpu_check.detection_latencies(model, cfg, stitches, CPU, amp=False, runs=1, warmup=0)
    assert list(ms) == stitches and all(v > 0 for v in ms.values())


def test_a_non_finite_loss_is_reported_not_raised():
    model, cfg = gpu_check.depth_model(DEPTH_TINY, CPU)
    with torch.no_grad():
        model.head.parameters().__next__().fill_(float("nan"))  # every prediction NaN
    check = gpu_check.depth_train_steps(model, cfg, CPU, steps=2, batch=2, amp=False)
    assert not check.finite and "NOT FINITE" in gpu_check.step_row("depth train", "", check)[2]


def test_two_gloo_processes_merge_to_the_one_process_evaluation():
    passed, what = gpu_check.merge_check(DEPTH_TINY, "cpu", images=4)
    assert passed, what
    assert what.startswith("2 ranks x 2 frames vs 1 process")
