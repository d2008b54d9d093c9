"""Seeded figures of the detection demo: what `make demo` prints, over three seeds and a same-seed repeat.

Runs the detection part of `make demo` as `make demo` runs it (subprocesses, ``OMP_NUM_THREADS=1``): the synthetic
COCO-format shapes (``python -m datasets.make_synthetic_coco``, its defaults), 500 training iterations of
``projects/snnet_vitdet/configs/synthetic/mask_rcnn_snnetv2_tiny.py`` and the ``--eval-only --stitch all`` report
over the 14 stitches. One run per seed, each in its own directory under ``--work-dir``; the seed is the config's
``train.seed`` (weight init, data order and augmentation, per-iteration RNGs) and ``snnet.sampler_seed`` (ROS stitch
draws). The config's default seed runs with no seed override at all, i.e. exactly the commands of `make demo`
(the data go to ``--work-dir`` instead of ``output/synthetic_coco``: the same files, written by the same command).
The first seed is then run ``--repeat`` more times to measure same-seed repeatability (metrics and weights).

    python benchmarks/demo_figures.py                      # seeds 0,1,2 + one repeat of seed 0: ~4 x 6 min

Writes ``--output``/detection_figures.json (per run: seed, overrides, each stitch's bbox/segm AP, the anchors'
AP, the min-max over the stitches, a digest of the trained weights, wall times, torch, CPU and git commit) and
``--output``/detection_figures.md (the table the README's figures come from), and prints the README comment
that ``tests/test_demo_figures.py`` checks against the JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from snnet_core.atomic_io import write_atomic, write_json_atomic  # noqa: E402

CONFIG = "projects/snnet_vitdet/configs/synthetic/mask_rcnn_snnetv2_tiny.py"
TRAIN_NET = "projects/snnet_vitdet/train_net.py"
REPORT_DIR = "stitch_report_synthetic_shapes_val"  # train_net's default: stitch_report_<test dataset>
RESULTS = os.path.join(REPORT_DIR, "stitch_results.json")
ANCHORS = {"fast": 0, "slow": 1}  # stitch ids of the two anchors (S[0:4] and L[0:8])
METRICS = ("bbox_AP", "segm_AP")
RESULTS_JSON, RESULTS_MD = "detection_figures.json", "detection_figures.md"
DEFAULT_RESULTS_DIR = os.path.join(REPO, "benchmarks", "results", "demo")
README_TAG = "demo-figures: detection seed"
# the README comment: `<!-- demo-figures: detection seed0 bbox_AP fast=XX.X slow=XX.X stitches=XX.X-XX.X;
# segm_AP fast=XX.X slow=XX.X stitches=XX.X-XX.X -->`
_NUM = r"(\d+\.\d)"
README_PATTERN = re.compile(
    r"<!--\s*" + re.escape(README_TAG) + r"(?P<seed>\d+)\s+"
    + r";\s*".join(rf"(?P<{m}>{m}) fast={_NUM} slow={_NUM} stitches={_NUM}-{_NUM}" for m in METRICS)
    + r"\s*-->")


def config_seeds(config: str = CONFIG) -> Tuple[int, int]:
    """``(train.seed, snnet.sampler_seed)`` of the config as `make demo` loads it (no overrides)."""
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(os.path.join(REPO, config))
    return int(cfg.train.seed), int(cfg.snnet.sampler_seed)


def seed_overrides(seed: int, default: Tuple[int, int]) -> List[str]:
    """key=value overrides that train with ``seed``: none for the config's own seed (then the commands are
    exactly `make demo`'s), else ``train.seed`` and ``snnet.sampler_seed``."""
    if default == (seed, seed):
        return []
    return [f"train.seed={seed}", f"snnet.sampler_seed={seed}"]


def demo_env() -> Dict[str, str]:
    """The subprocesses' environment: `make demo`'s ``OMP_NUM_THREADS=1`` (the figures are for one thread)."""
    return dict(os.environ, OMP_NUM_THREADS="1")


def dataset_command(data_root: str) -> List[str]:
    """`make demo`'s dataset command, writing to ``data_root``."""
    return [sys.executable, "-m", "datasets.make_synthetic_coco", "--output", data_root]


def demo_commands(output_dir: str, data_root: str, overrides: Sequence[str]) -> Tuple[List[str], List[str]]:
    """`make demo`'s training and ``--eval-only --stitch all`` commands for ``output_dir`` (argv lists)."""
    common = [f"datasets.root={data_root}", *overrides, f"train.output_dir={output_dir}"]
    train = [sys.executable, TRAIN_NET, "--config-file", CONFIG, *common]
    evaluate = [sys.executable, TRAIN_NET, "--config-file", CONFIG, "--eval-only", "--stitch", "all", *common,
                f"train.init_checkpoint={os.path.join(output_dir, 'model_final.pth')}"]
    return train, evaluate


def run_logged(argv: List[str], log_path: str, what: str) -> float:
    """Run ``argv`` in the repository with its output in ``log_path``; returns the wall time (s). A failure
    raises with the log's tail."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(argv, cwd=REPO, env=demo_env(), stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        with open(log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-25:])
        raise RuntimeError(f"{what} failed (exit {code}): {' '.join(argv)}\n--- last lines of {log_path} ---\n{tail}")
    return time.perf_counter() - start


def make_dataset(data_root: str, log_dir: str) -> None:
    """The synthetic shapes, as `make demo` writes them (deterministic: the same files every time)."""
    os.makedirs(log_dir, exist_ok=True)
    run_logged(dataset_command(data_root), os.path.join(log_dir, "make_synthetic_coco.log"), "make_synthetic_coco")


def weights_digest(checkpoint: str) -> str:
    """sha256 (16 hex digits) of the model tensors of a detectron2 checkpoint (names, dtypes, shapes, bytes in
    name order): equal digests mean bit-identical weights, whatever else the file records."""
    import torch

    model = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    digest = hashlib.sha256()
    for name in sorted(model):
        tensor = model[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def summarize(results_path: str) -> Dict:
    """Per-stitch ``{id: {bbox_AP, segm_AP}}``, the anchors' AP and the min-max over the stitches, from a
    report's ``stitch_results.json``."""
    with open(results_path) as f:
        rows = json.load(f)["stitches"]
    missing = [str(i) for i in ANCHORS.values() if str(i) not in rows]
    if missing:
        raise KeyError(f"{results_path}: anchor stitch(es) {missing} missing; rerun the --eval-only --stitch all step")
    stitches = {k: {m: rows[k][m] for m in METRICS} for k in sorted(rows, key=int)}  # "<id>" keys, as JSON
    summary = {"num_stitches": len(stitches), "stitches": stitches}
    for m in METRICS:
        values = [s[m] for s in stitches.values() if s[m] is not None]
        summary[m] = {"fast": stitches[str(ANCHORS["fast"])][m], "slow": stitches[str(ANCHORS["slow"])][m],
                      "stitches_min": min(values), "stitches_max": max(values)}
    return summary


def run_demo(output_dir: str, data_root: str, seed: int, default: Tuple[int, int]) -> Dict:
    """Train and evaluate one seeded demo run in a fresh ``output_dir``; its figures and wall times."""
    if os.path.exists(output_dir):
        shutil.rmtree(output_dir)  # as `make demo`'s rm -rf: the run is made afresh
    os.makedirs(output_dir)
    overrides = seed_overrides(seed, default)
    env = environment()  # before the run: the commit whose code it runs
    train, evaluate = demo_commands(output_dir, data_root, overrides)
    train_s = run_logged(train, os.path.join(output_dir, "console_train.txt"), f"training (seed {seed})")
    eval_s = run_logged(evaluate, os.path.join(output_dir, "console_eval.txt"), f"evaluation (seed {seed})")
    return {"seed": seed, "overrides": overrides, "output_dir": os.path.relpath(output_dir, REPO),
            **summarize(os.path.join(output_dir, RESULTS)),
            "weights_sha256": weights_digest(os.path.join(output_dir, "model_final.pth")),
            "train_s": round(train_s, 1), "eval_s": round(eval_s, 1), "environment": env}


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo (``platform.processor()`` where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> Dict:
    """What the figures depend on besides the code: torch version, CPU (model and the SIMD level torch's kernels
    dispatch to), threads, and the code's commit (``dirty``: the code paths the demo runs differ from it)."""
    import torch

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    return {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "omp_num_threads": 1, "git_commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "snnet_core", "projects/snnet_vitdet", "datasets"))}


def same_figures(a: Dict, b: Dict) -> bool:
    """Every stitch's bbox/segm AP equal (exactly) in two runs."""
    return a["stitches"] == b["stitches"]


def seed_spread(runs: Sequence[Dict]) -> Dict[str, Dict[str, List[float]]]:
    """``{metric: {fast|slow|stitches_min|stitches_max: [min, max] over the runs}}``."""
    return {m: {k: [min(r[m][k] for r in runs), max(r[m][k] for r in runs)] for k in runs[0][m]} for m in METRICS}


def f1(x: float) -> str:
    return f"{x:.1f}"


def readme_figures(run: Dict) -> Dict[str, Dict[str, str]]:
    """The README's one-decimal figures of a run: ``{metric: {fast, slow, stitches_min, stitches_max}}``."""
    return {m: {k: f1(v) for k, v in run[m].items()} for m in METRICS}


def readme_comment(run: Dict) -> str:
    """The README comment stating ``run``'s figures (the line ``tests/test_demo_figures.py`` parses)."""
    parts = [f"{m} fast={f['fast']} slow={f['slow']} stitches={f['stitches_min']}-{f['stitches_max']}"
             for m, f in readme_figures(run).items()]
    return f"<!-- {README_TAG}{run['seed']} " + "; ".join(parts) + " -->"


def parse_readme_comment(text: str) -> Optional[Tuple[int, Dict[str, Dict[str, str]]]]:
    """``(seed, figures)`` of the README comment in ``text`` (figures as ``readme_figures``), or None if it has
    none."""
    match = README_PATTERN.search(text)
    if match is None:
        return None
    groups = match.groups()[1:]  # per metric: its name, fast, slow, stitches min, stitches max
    keys = ("fast", "slow", "stitches_min", "stitches_max")
    return int(match["seed"]), {groups[i]: dict(zip(keys, groups[i + 1:i + 5])) for i in range(0, len(groups), 5)}


def markdown(record: Dict) -> str:
    """The table of ``detection_figures.md``."""
    runs = record["runs"]
    envs = [r["environment"] for r in runs]
    commits = sorted({e["git_commit"][:12] + (" (code paths modified)" if e["dirty"] else "") for e in envs})
    versions = sorted({f"torch {e['torch']}, {e['cpu']} ({e['cpu_capability']})" for e in envs})
    lines = ["# Detection demo figures (`make demo`, tiny SN-Netv2 Mask R-CNN, synthetic shapes)", "",
             f"{'; '.join(versions)}, OMP_NUM_THREADS=1, commit {', '.join(commits)}; written by "
             "`benchmarks/demo_figures.py`.", "",
             "| run | seed | bbox AP fast / slow | bbox AP 14 stitches | segm AP fast / slow | segm AP 14 stitches "
             "| train + eval (s) |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        b, s = run["bbox_AP"], run["segm_AP"]
        lines.append(f"| {run['name']} | {run['seed']} | {f1(b['fast'])} / {f1(b['slow'])} | "
                     f"{f1(b['stitches_min'])}-{f1(b['stitches_max'])} | {f1(s['fast'])} / {f1(s['slow'])} | "
                     f"{f1(s['stitches_min'])}-{f1(s['stitches_max'])} | {run['train_s']:.0f} + {run['eval_s']:.0f} |")
    spread = record["seed_spread"]

    def rng(m: str, k: str) -> str:
        lo, hi = spread[m][k]
        return f"{f1(lo)}-{f1(hi)}"

    lines.append(f"| range over seeds {','.join(str(s) for s in record['seeds'])} | | "
                 f"{rng('bbox_AP', 'fast')} / {rng('bbox_AP', 'slow')} | "
                 f"min {rng('bbox_AP', 'stitches_min')}, max {rng('bbox_AP', 'stitches_max')} | "
                 f"{rng('segm_AP', 'fast')} / {rng('segm_AP', 'slow')} | "
                 f"min {rng('segm_AP', 'stitches_min')}, max {rng('segm_AP', 'stitches_max')} | |")
    lines.append("")
    for rep in record["repeats"]:
        lines.append(f"- {rep['name']} vs {rep['of']}: every stitch's AP "
                     f"{'equal' if rep['equal_figures'] else 'DIFFERENT'}, weights "
                     f"{'bit-identical' if rep['equal_weights'] else 'DIFFERENT'}.")
    lines += ["", "README comment (checked by `tests/test_demo_figures.py`):", "",
              "    " + record["readme_comment"], ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training/sampler seeds (default 0,1,2)")
    parser.add_argument("--repeat", type=int, default=1, help="more runs of the first seed (repeatability)")
    parser.add_argument("--work-dir", default="output/demo_figures", help="one output directory per run under it")
    parser.add_argument("--output", default=DEFAULT_RESULTS_DIR, help="where detection_figures.{json,md} go")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.repeat < 0 or not seeds:
        parser.error("--seeds needs at least one seed and --repeat must be >= 0")
    work_dir = os.path.abspath(args.work_dir)

    default = config_seeds()
    print(f"config defaults: train.seed={default[0]}, snnet.sampler_seed={default[1]}"
          + ("" if default[0] == default[1] else " (they differ: every run overrides both)"), flush=True)
    data_root = os.path.join(work_dir, "synthetic_coco")
    print(f"synthetic data -> {data_root}", flush=True)
    make_dataset(data_root, work_dir)

    plan = [(f"seed{s}", s) for s in seeds]
    plan += [(f"seed{seeds[0]}_repeat{i}", seeds[0]) for i in range(1, args.repeat + 1)]
    runs = []
    for n, (name, seed) in enumerate(plan, 1):
        out = os.path.join(work_dir, name)
        print(f"[{n}/{len(plan)}] {name}: train + eval in {out} (console: console_{{train,eval}}.txt there)",
              flush=True)
        run = {"name": name, **run_demo(out, data_root, seed, default)}
        runs.append(run)
        print(f"[{n}/{len(plan)}] {name}: bbox AP fast {f1(run['bbox_AP']['fast'])} slow {f1(run['bbox_AP']['slow'])}"
              f", segm AP fast {f1(run['segm_AP']['fast'])} slow {f1(run['segm_AP']['slow'])}; "
              f"{run['train_s']:.0f} s train + {run['eval_s']:.0f} s eval", flush=True)

    by_name = {r["name"]: r for r in runs}
    first = by_name[f"seed{seeds[0]}"]
    repeats = [{"name": r["name"], "of": first["name"], "equal_figures": same_figures(r, first),
                "equal_weights": r["weights_sha256"] == first["weights_sha256"]} for r in runs[len(seeds):]]
    record = {"config": CONFIG, "config_default_seeds": {"train.seed": default[0], "snnet.sampler_seed": default[1]},
              "seeds": seeds, "runs": runs, "repeats": repeats,
              "seed_spread": seed_spread(runs[:len(seeds)]),
              "readme_comment": readme_comment(first)}
    os.makedirs(args.output, exist_ok=True)
    write_json_atomic(os.path.join(args.output, RESULTS_JSON), record)
    text = markdown(record)
    write_atomic(os.path.join(args.output, RESULTS_MD), lambda f: f.write(text))
    print(markdown(record), flush=True)
    return record


if __name__ == "__main__":
    main()
