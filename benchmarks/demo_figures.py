"""Seeded figures of both demos over SIMD levels: what `make demo` prints, and which of it is bit-stable.

A tiny model trained from scratch on a CPU is chaotic in float rounding: another CPU's kernels (another SIMD level
of torch's dispatcher) train other weights, and for the detection demo they move the AP as much as another seed
does. The figures are therefore stated as ranges over levels and seeds, with what is and is not bit-stable:
identical in a same-seed repeat at one level, identical across levels.

Every run is a set of child processes with `make demo`'s ``OMP_NUM_THREADS=1`` whose torch dispatches to one
level: ``native`` (the CPU's best) or ``ATEN_CPU_CAPABILITY=default|avx2|avx512`` (a level above the CPU's falls
back to it; the level recorded is the one the child reports, with the CPU model, torch version, threads and
commit).

``detection``: the detection part of `make demo` (the synthetic COCO-format shapes, 500 iterations of
``projects/snnet_vitdet/configs/synthetic/mask_rcnn_snnetv2_tiny.py``, the ``--eval-only --stitch all`` report
over its 14 stitches) per level and seed. The config's seed runs with no override (exactly `make demo`'s
commands); another seed overrides ``train.seed`` and ``snnet.sampler_seed``. ``--repeat`` more runs of the first
seed at the first level measure same-seed repeatability.

``depth``: the depth demo's README training command (synthetic NYUv2, 6 epochs of
``projects/snnet_dpt/configs/synthetic/dpt_snnetv2_tiny.py`` with ``--export-stitch 5``; it reports all 14
stitches) per level, seed 0: the per-epoch mean loss, each stitch's a1, the stitch ``python -m snnet_core.select
REPORT --max-gflops 0.27`` picks, and a digest of the weights.

    python benchmarks/demo_figures.py detection --levels native,avx2        # 2 x seeds 0,1,2 + 1 repeat: ~35 min
    python benchmarks/demo_figures.py depth --levels native,default,avx2    # ~3 x 1 min

Runs are merged into the results in ``--output``: a run replaces the stored one of the same name, level and CPU
model and the others are kept, so levels (and machines) can be measured one invocation at a time; ``--fresh``
drops the stored runs. Writes ``detection_figures.{json,md}`` or ``depth_figures.{json,md}``; for detection it
prints the README comment that ``tests/test_demo_figures.py`` checks README.md against.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from snnet_core.io.atomic_io import write_atomic, write_json_atomic  # noqa: E402

CONFIG = "projects/snnet_vitdet/configs/synthetic/mask_rcnn_snnetv2_tiny.py"
TRAIN_NET = "projects/snnet_vitdet/train_net.py"
REPORT_DIR = "stitch_report_synthetic_shapes_val"  # train_net's default: stitch_report_<test dataset>
ANCHORS = {"fast": 0, "slow": 1}  # stitch ids of the two anchors (S[0:4] and L[0:8])
METRICS = ("bbox_AP", "segm_AP")
FIGURES = ("fast", "slow", "stitches_min", "stitches_max")  # per metric: the anchors and the range over stitches
DEPTH_CONFIG = "projects/snnet_dpt/configs/synthetic/dpt_snnetv2_tiny.py"
DEPTH_TRAIN = "projects/snnet_dpt/train.py"
DEPTH_REPORT_DIR = "stitch_report_nyuv2_synthetic_test"
DEPTH_BUDGET = 0.27  # GFLOPs: the README's `select --max-gflops 0.27` and `--export-stitch best:0.27`
RESULTS_FILE = "stitch_results.json"
LEVELS = ("native", "default", "avx2", "avx512")  # native: ATEN_CPU_CAPABILITY unset
DEFAULT_RESULTS_DIR = os.path.join(REPO, "benchmarks", "results", "demo")
README_TAG = "demo-figures: detection"


# --- child processes at one SIMD level -------------------------------------------------------------------------

def level_env(level: str) -> Dict[str, str]:
    """The children's environment at ``level``: `make demo`'s ``OMP_NUM_THREADS=1`` and ``ATEN_CPU_CAPABILITY``
    (unset for ``native``)."""
    if level not in LEVELS:
        raise ValueError(f"--levels: unknown SIMD level {level!r}; choose from {', '.join(LEVELS)}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("ATEN_CPU_CAPABILITY", None)
    if level != "native":
        env["ATEN_CPU_CAPABILITY"] = level
    return env


def run_logged(argv: List[str], log_path: str, what: str, env: Dict[str, str]) -> float:
    """Run ``argv`` in the repository with ``env`` and its output in ``log_path``; returns the wall time (s). A
    failure raises with the log's tail."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        with open(log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-25:])
        raise RuntimeError(f"{what} failed (exit {code}): {' '.join(argv)}\n--- last lines of {log_path} ---\n{tail}")
    return time.perf_counter() - start


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


_PROBE = ("import json, platform, torch; print(json.dumps({'torch': torch.__version__, "
          "'python': platform.python_version(), 'cpu_capability': torch.backends.cpu.get_cpu_capability(), "
          "'omp_num_threads': torch.get_num_threads()}))")


def environment(level: str, code_paths: Sequence[str]) -> Dict:
    """What a run at ``level`` depends on besides the code, as its children see it: torch version, CPU model and
    the SIMD level torch dispatches to, threads; and the code's commit (``dirty``: ``code_paths`` differ from
    it)."""
    env = level_env(level)
    probe = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                           check=True)

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    return {**json.loads(probe.stdout), "cpu": cpu_model(), "requested_level": level,
            "git_commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", *code_paths))}


def weights_digest(checkpoint: str) -> str:
    """sha256 (16 hex digits) of the model tensors of a checkpoint (``{"model": state_dict}``; names, dtypes,
    shapes, bytes in name order): equal digests mean bit-identical weights, whatever else the file records."""
    import torch

    model = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    digest = hashlib.sha256()
    for name in sorted(model):
        tensor = model[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def fresh_dir(path: str) -> None:
    """An empty ``path``, as `make demo`'s ``rm -rf``: every run is made afresh."""
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)


# --- detection -------------------------------------------------------------------------------------------------

DETECTION_CODE = ("snnet_core", "projects/snnet_vitdet", "datasets")


def config_seeds(config: str = CONFIG) -> Tuple[int, int]:
    """``(train.seed, snnet.sampler_seed)`` of the config as `make demo` loads it (no overrides)."""
    from snnet_core.io.config_io import load_config_file

    cfg = load_config_file(os.path.join(REPO, config))
    return int(cfg.train.seed), int(cfg.snnet.sampler_seed)


def seed_overrides(seed: int, default: Tuple[int, int]) -> List[str]:
    """key=value overrides that train with ``seed``: none for the config's own seed (then the commands are
    exactly `make demo`'s), else ``train.seed`` and ``snnet.sampler_seed``."""
    if default == (seed, seed):
        return []
    return [f"train.seed={seed}", f"snnet.sampler_seed={seed}"]


def make_dataset(data_root: str, log_dir: str) -> None:
    """The synthetic shapes, as `make demo` writes them (deterministic: the same files every time)."""
    os.makedirs(log_dir, exist_ok=True)
    run_logged([sys.executable, "-m", "datasets.make_synthetic_coco", "--output", data_root],
               os.path.join(log_dir, "make_synthetic_coco.log"), "make_synthetic_coco", level_env("native"))


def demo_commands(output_dir: str, data_root: str, overrides: Sequence[str]) -> Tuple[List[str], List[str]]:
    """`make demo`'s training and ``--eval-only --stitch all`` commands for ``output_dir`` (argv lists)."""
    common = [f"datasets.root={data_root}", *overrides, f"train.output_dir={output_dir}"]
    train = [sys.executable, TRAIN_NET, "--config-file", CONFIG, *common]
    evaluate = [sys.executable, TRAIN_NET, "--config-file", CONFIG, "--eval-only", "--stitch", "all", *common,
                f"train.init_checkpoint={os.path.join(output_dir, 'model_final.pth')}"]
    return train, evaluate


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


def run_demo(output_dir: str, data_root: str, seed: int, default: Tuple[int, int], level: str = "native",
             extra_overrides: Sequence[str] = (), evaluate: bool = True) -> Dict:
    """Train (and with ``evaluate`` report) one seeded detection demo run at ``level`` in a fresh ``output_dir``;
    its figures, weights digest and wall times. ``extra_overrides`` (e.g. ``train.max_iter=N``) follow the seed's."""
    fresh_dir(output_dir)
    overrides = [*seed_overrides(seed, default), *extra_overrides]
    env = environment(level, DETECTION_CODE)  # before the run: the commit whose code it runs
    train, report = demo_commands(output_dir, data_root, overrides)
    train_s = run_logged(train, os.path.join(output_dir, "console_train.txt"), f"training (seed {seed})",
                         level_env(level))
    run = {"seed": seed, "overrides": overrides, "output_dir": os.path.relpath(output_dir, REPO)}
    if evaluate:
        eval_s = run_logged(report, os.path.join(output_dir, "console_eval.txt"), f"evaluation (seed {seed})",
                            level_env(level))
        run.update(summarize(os.path.join(output_dir, REPORT_DIR, RESULTS_FILE)), eval_s=round(eval_s, 1))
    return {**run, "weights_sha256": weights_digest(os.path.join(output_dir, "model_final.pth")),
            "train_s": round(train_s, 1), "environment": env}


# --- depth -----------------------------------------------------------------------------------------------------

DEPTH_CODE = ("snnet_core", "projects/snnet_dpt", "datasets")


def make_depth_dataset(data_root: str, log_dir: str) -> None:
    """The README's synthetic NYUv2 (40 training, 10 test frames of 128x160; deterministic)."""
    os.makedirs(log_dir, exist_ok=True)
    run_logged([sys.executable, "datasets/make_synthetic_nyu.py", "--output", data_root, "--train", "40", "--test",
                "10", "--size", "128", "160"], os.path.join(log_dir, "make_synthetic_nyu.log"), "make_synthetic_nyu",
               level_env("native"))


def depth_command(output_dir: str, data_root: str) -> List[str]:
    """The README's depth demo training command for ``output_dir`` (it ends with the report of every stitch)."""
    return [sys.executable, DEPTH_TRAIN, "--config-file", DEPTH_CONFIG, "--export-stitch", "5",
            f"dataloader.root={data_root}", f"train.output_dir={output_dir}"]


def run_depth(output_dir: str, data_root: str, level: str = "native") -> Dict:
    """The depth demo at ``level`` in a fresh ``output_dir``: per-epoch mean loss, each stitch's a1 and GFLOPs,
    the stitch picked within ``DEPTH_BUDGET`` GFLOPs, weights digest and wall time."""
    from snnet_core.select import best_stitch_in_report

    fresh_dir(output_dir)
    env = environment(level, DEPTH_CODE)
    train_s = run_logged(depth_command(output_dir, data_root), os.path.join(output_dir, "console_train.txt"),
                         "depth training", level_env(level))
    with open(os.path.join(output_dir, "metrics.json")) as f:
        losses = [row["epoch/mean_silog"] for row in map(json.loads, f) if "epoch/mean_silog" in row]
    report = os.path.join(output_dir, DEPTH_REPORT_DIR)
    with open(os.path.join(report, RESULTS_FILE)) as f:
        rows = json.load(f)["stitches"]
    stitches = {k: {"route": rows[k]["route"], "a1": rows[k]["a1"], "gflops": rows[k]["gflops"]}
                for k in sorted(rows, key=int)}
    pick = str(best_stitch_in_report(report, DEPTH_BUDGET, task="depth"))
    return {"seed": 0, "output_dir": os.path.relpath(output_dir, REPO), "losses": losses, "stitches": stitches,
            "pick": {"id": int(pick), **stitches[pick]},
            "weights_sha256": weights_digest(os.path.join(output_dir, "model_final.pth")),
            "train_s": round(train_s, 1), "environment": env}


# --- what is bit-stable ----------------------------------------------------------------------------------------

def level_of(run: Dict) -> str:
    """The SIMD level a run's torch dispatched to (``DEFAULT``, ``AVX2``, ``AVX512``, ...)."""
    return run["environment"]["cpu_capability"]


def run_label(run: Dict) -> str:
    """``<name> on <CPU model>``."""
    return f"{run['name']} on {run['environment']['cpu']}"


def same_figures(a: Dict, b: Dict) -> bool:
    """Every figure of two runs equal, exactly: each stitch's metrics (and the depth losses)."""
    return all(a.get(k) == b.get(k) for k in ("stitches", "losses"))


def _groups(runs: Sequence[Dict], key: Callable[[Dict], Any]) -> Dict[Any, List[Dict]]:
    groups: Dict[Any, List[Dict]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    return groups


def repeats(runs: Sequence[Dict]) -> List[Dict]:
    """Same seed, same level (any run name or CPU model): do all runs equal the first?"""
    out = []
    for (level, seed), group in sorted(_groups(runs, lambda r: (level_of(r), r["seed"])).items()):
        if len(group) > 1:
            out.append({"level": level, "seed": seed, "runs": [run_label(r) for r in group],
                        "equal_weights": len({r["weights_sha256"] for r in group}) == 1,
                        "equal_figures": all(same_figures(r, group[0]) for r in group)})
    return out


def across_levels(runs: Sequence[Dict]) -> List[Dict]:
    """Same seed at several levels (the first run of each level): are they equal?"""
    out = []
    for seed, group in sorted(_groups(runs, lambda r: r["seed"]).items()):
        first = {}
        for run in group:
            first.setdefault(level_of(run), run)
        if len(first) > 1:
            ordered = [first[k] for k in sorted(first)]
            out.append({"seed": seed, "levels": sorted(first),
                        "equal_weights": len({r["weights_sha256"] for r in ordered}) == 1,
                        "equal_figures": all(same_figures(r, ordered[0]) for r in ordered)})
    return out


def ranges(runs: Sequence[Dict]) -> Dict[str, Dict[str, List[float]]]:
    """``{metric: {fast|slow|stitches_min|stitches_max: [min, max] over the runs}}``."""
    return {m: {k: [min(r[m][k] for r in runs), max(r[m][k] for r in runs)] for k in FIGURES} for m in METRICS}


def merge_runs(stored: Sequence[Dict], new: Sequence[Dict]) -> List[Dict]:
    """``stored`` with each run that ``new`` measures again (same name, level and CPU model) replaced."""
    def key(run: Dict) -> Tuple[str, str, str]:
        return run["name"], level_of(run), run["environment"]["cpu"]

    fresh = {key(r): r for r in new}
    kept = [r for r in stored if key(r) not in fresh]
    return kept + list(new)


def f1(x: float) -> str:
    """One decimal, as the README states AP."""
    return f"{x:.1f}"


def span(lo_hi: Sequence[float]) -> str:
    """``[lo, hi]`` as ``lo-hi``, one decimal each."""
    return f"{f1(lo_hi[0])}-{f1(lo_hi[1])}"


def detection_record(runs: Sequence[Dict], default: Tuple[int, int]) -> Dict:
    """The detection results: the runs, the ranges over all of them and per level, and what is bit-stable."""
    levels = sorted({level_of(r) for r in runs})
    record = {"config": CONFIG, "config_default_seeds": {"train.seed": default[0], "snnet.sampler_seed": default[1]},
              "seeds": sorted({r["seed"] for r in runs}), "levels": levels, "runs": list(runs),
              "ranges": ranges(runs),
              "ranges_by_level": {lv: ranges([r for r in runs if level_of(r) == lv]) for lv in levels},
              "repeats": repeats(runs), "across_levels": across_levels(runs)}
    record["readme_comment"] = readme_comment(record)
    return record


def readme_comment(record: Dict) -> str:
    """The README comment stating the measured ranges (the line ``tests/test_demo_figures.py`` looks for)."""
    parts = [f"{m} fast={span(r['fast'])} slow={span(r['slow'])} stitches={f1(r['stitches_min'][0])}-"
             f"{f1(r['stitches_max'][1])}" for m, r in record["ranges"].items()]
    return (f"<!-- {README_TAG} seeds {','.join(map(str, record['seeds']))} at {','.join(record['levels'])}: "
            + "; ".join(parts) + " -->")


def _yes(flag: bool) -> str:
    return "identical" if flag else "DIFFERENT"


def bit_stability_lines(record: Dict, figures: str, per_seed: bool) -> List[str]:
    """Markdown bullets of ``record``'s same-level repeats and cross-level comparisons: whether the weights and the
    ``figures`` (e.g. ``"AP"``) were identical; ``per_seed`` names the seed of each (detection runs several)."""
    lines = []
    for rep in record["repeats"]:
        seed = f"same seed {rep['seed']}, " if per_seed else ""
        lines.append(f"- {seed}same level {rep['level']} ({'; '.join(rep['runs'])}): weights "
                     f"{_yes(rep['equal_weights'])}, {figures} {_yes(rep['equal_figures'])}.")
    for acr in record["across_levels"]:
        seed = f"seed {acr['seed']} at " if per_seed else ""
        lines.append(f"- {seed}{', '.join(acr['levels'])}: weights {_yes(acr['equal_weights'])}, {figures} "
                     f"{_yes(acr['equal_figures'])}.")
    return lines


def detection_markdown(record: Dict) -> str:
    """``detection_figures.md``: per level and seed, the anchors' and stitches' AP; ranges; bit-stability."""
    runs = sorted(record["runs"], key=lambda r: (level_of(r), r["seed"], r["name"]))
    envs = [r["environment"] for r in runs]
    commits = sorted({e["git_commit"][:12] + (" (code paths modified)" if e["dirty"] else "") for e in envs})
    machines = sorted({f"{e['cpu']}, torch {e['torch']}" for e in envs})
    lines = ["# Detection demo figures (`make demo`, tiny SN-Netv2 Mask R-CNN, synthetic shapes)", "",
             f"{'; '.join(machines)}; OMP_NUM_THREADS=1; commit {', '.join(commits)}; SIMD level set per run with "
             "ATEN_CPU_CAPABILITY; written by `benchmarks/demo_figures.py detection`.", "",
             "| level | run | CPU | seed | bbox AP fast / slow | bbox AP 14 stitches | segm AP fast / slow "
             "| segm AP 14 stitches | weights | train + eval (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        b, s = run["bbox_AP"], run["segm_AP"]
        lines.append(f"| {level_of(run)} | {run['name']} | {run['environment']['cpu']} | {run['seed']} | "
                     f"{f1(b['fast'])} / {f1(b['slow'])} | {f1(b['stitches_min'])}-{f1(b['stitches_max'])} | "
                     f"{f1(s['fast'])} / {f1(s['slow'])} | {f1(s['stitches_min'])}-{f1(s['stitches_max'])} | "
                     f"`{run['weights_sha256']}` | {run['train_s']:.0f} + {run['eval_s']:.0f} |")
    rows = [(f"range at {lv}", r, sorted({run["seed"] for run in runs if level_of(run) == lv}))
            for lv, r in record["ranges_by_level"].items()]
    for label, rng, seeds in [*rows, ("range, all levels", record["ranges"], record["seeds"])]:
        b, s = rng["bbox_AP"], rng["segm_AP"]
        lines.append(f"| {label} | | | {','.join(map(str, seeds))} | {span(b['fast'])} / "
                     f"{span(b['slow'])} | {f1(b['stitches_min'][0])}-{f1(b['stitches_max'][1])} | "
                     f"{span(s['fast'])} / {span(s['slow'])} | {f1(s['stitches_min'][0])}-{f1(s['stitches_max'][1])}"
                     " | | |")
    lines += ["", "Bit-stability (weights digest and every stitch's AP, compared exactly):", ""]
    lines += bit_stability_lines(record, "AP", per_seed=True)
    lines += ["", "README comment (checked by `tests/test_demo_figures.py`):", "",
              "    " + record["readme_comment"], ""]
    return "\n".join(lines)


def depth_record(runs: Sequence[Dict]) -> Dict:
    """The depth results: the runs, what is bit-stable, and the largest difference across levels."""
    firsts: Dict[str, Dict] = {}
    for run in runs:
        firsts.setdefault(level_of(run), run)
    base = next(iter(firsts.values()))

    def largest(values) -> float:
        return max((abs(a - b) for r in firsts.values() for a, b in zip(values(r), values(base))), default=0.0)

    common = sorted(set.intersection(*(set(r["stitches"]) for r in firsts.values())), key=int)
    return {"config": DEPTH_CONFIG, "levels": sorted(firsts), "runs": list(runs), "repeats": repeats(runs),
            "across_levels": across_levels(runs),
            "largest_difference_across_levels": {
                "epoch_mean_loss": largest(lambda r: r["losses"]),
                "a1": largest(lambda r: [r["stitches"][k]["a1"] for k in common])}}


def depth_markdown(record: Dict) -> str:
    """``depth_figures.md``: per level, the loss per epoch, the picked stitch; what is bit-stable."""
    runs = sorted(record["runs"], key=lambda r: (level_of(r), r["name"]))
    lines = ["# Depth demo figures (the README's tiny SN-Netv2 DPT commands, synthetic NYUv2, seed 0)", "",
             "OMP_NUM_THREADS=1; SIMD level set per run with ATEN_CPU_CAPABILITY; written by "
             "`benchmarks/demo_figures.py depth`.", "",
             f"| level | run | CPU | torch | mean loss per epoch | stitch picked within {DEPTH_BUDGET} GFLOPs (a1, "
             "GFLOPs) | weights | train (s) | commit |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        env, pick = run["environment"], run["pick"]
        lines.append(f"| {level_of(run)} | {run['name']} | {env['cpu']} | {env['torch']} | "
                     f"{' '.join(f'{x:.3f}' for x in run['losses'])} | {pick['id']} (`{pick['route']}`, "
                     f"{pick['a1']:.3f}, {pick['gflops']:.3f}) | `{run['weights_sha256']}` | "
                     f"{run['train_s']:.0f} | {env['git_commit'][:12]}"
                     f"{' (modified)' if env['dirty'] else ''} |")
    lines += ["", "Bit-stability (weights digest, every epoch's loss and every reported stitch's a1, compared "
              "exactly):", ""]
    lines += bit_stability_lines(record, "figures", per_seed=False)
    diff = record["largest_difference_across_levels"]
    lines += [f"- largest difference across levels: {diff['epoch_mean_loss']:.2e} in an epoch's mean loss, "
              f"{diff['a1']:.2e} in a stitch's a1.", ""]
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------------------

def load_runs(path: str, fresh: bool) -> List[Dict]:
    """The runs stored in the results file ``path`` (none with ``fresh`` or where there is no file)."""
    if fresh or not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)["runs"]


def write_results(output: str, name: str, record: Dict, text: str) -> None:
    """``output/<name>.json`` and ``.md`` (atomic writes); the markdown is printed too."""
    os.makedirs(output, exist_ok=True)
    write_json_atomic(os.path.join(output, f"{name}.json"), record)
    write_atomic(os.path.join(output, f"{name}.md"), lambda f: f.write(text))
    print(text, flush=True)


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", choices=("detection", "depth"))
    parser.add_argument("--levels", default="native", help=f"comma-separated SIMD levels ({', '.join(LEVELS)}; "
                        "default native)")
    parser.add_argument("--seeds", default="0,1,2", help="detection: comma-separated seeds (default 0,1,2)")
    parser.add_argument("--repeat", type=int, default=1, help="more runs of the first seed at the first level")
    parser.add_argument("--work-dir", default="output/demo_figures", help="one output directory per run under it")
    parser.add_argument("--output", default=DEFAULT_RESULTS_DIR, help="where <demo>_figures.{json,md} go")
    parser.add_argument("--fresh", action="store_true", help="drop the stored runs instead of merging into them")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    levels = args.levels.split(",")
    for level in levels:
        if level not in LEVELS:
            parser.error(f"--levels: unknown SIMD level {level!r}; choose from {', '.join(LEVELS)}")
    if args.repeat < 0 or not seeds:
        parser.error("--seeds needs at least one seed and --repeat must be >= 0")
    work_dir = os.path.abspath(args.work_dir)
    name = f"{args.demo}_figures"
    stored = load_runs(os.path.join(args.output, f"{name}.json"), args.fresh)

    if args.demo == "depth":
        data_root = os.path.join(work_dir, "nyu_synthetic")
        make_depth_dataset(data_root, work_dir)
        plan = [(lv, "seed0") for lv in levels]
        plan += [(levels[0], f"seed0_repeat{i}") for i in range(1, args.repeat + 1)]
        runs = []
        for n, (level, run_name) in enumerate(plan, 1):
            print(f"[{n}/{len(plan)}] depth {level} {run_name}", flush=True)
            runs.append({"name": run_name, **run_depth(os.path.join(work_dir, f"dpt_{level}_{run_name}"), data_root,
                                                       level)})
            record = depth_record(merge_runs(stored, runs))  # written after each run: an interruption keeps it
            write_results(args.output, name, record, depth_markdown(record))
        return record

    default = config_seeds()
    print(f"config defaults: train.seed={default[0]}, snnet.sampler_seed={default[1]}", flush=True)
    data_root = os.path.join(work_dir, "synthetic_coco")
    make_dataset(data_root, work_dir)
    plan = [(lv, f"seed{s}", s) for lv in levels for s in seeds]
    plan += [(levels[0], f"seed{seeds[0]}_repeat{i}", seeds[0]) for i in range(1, args.repeat + 1)]
    runs = []
    for n, (level, run_name, seed) in enumerate(plan, 1):
        out = os.path.join(work_dir, f"{level}_{run_name}")
        print(f"[{n}/{len(plan)}] {level} {run_name}: train + eval in {out}", flush=True)
        run = {"name": run_name, **run_demo(out, data_root, seed, default, level)}
        runs.append(run)
        print(f"[{n}/{len(plan)}] {level_of(run)} {run_name}: bbox AP fast {f1(run['bbox_AP']['fast'])} slow "
              f"{f1(run['bbox_AP']['slow'])}, segm AP fast {f1(run['segm_AP']['fast'])} slow "
              f"{f1(run['segm_AP']['slow'])}; {run['train_s']:.0f} s train + {run['eval_s']:.0f} s eval", flush=True)
        record = detection_record(merge_runs(stored, runs), default)  # after each run, as depth's
        write_results(args.output, name, record, detection_markdown(record))
    return record


if __name__ == "__main__":
    main()
