"""The command line that the plain-PyTorch projects' ``train.py`` share (depth, classification): detectron2's parser
with the per-stitch flags, the ``--eval-only`` flag check, the checkpoint ``last_checkpoint`` names, and one process
of the job, alone, under torchrun or started by detectron2's ``launch`` (``--num-gpus``), and the writing of the
stitches ``--export-stitch`` chooses."""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Callable, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple

from snnet_core.cli import launch_command, use_launch_defaults
from snnet_core.distributed import DistContext, destroy_process_groups, init_distributed
from snnet_core.evaluation.latency_options import add_latency_arguments
from snnet_core.evaluation.report import RESULTS_FILE
from snnet_core.io.run_dir import check_export_targets, check_output_dir, export_dir, last_checkpoint, lock_run_dir
from snnet_core.model.stitch_space import StitchSpace
from snnet_core.select import plot_exported_stitch, resolve_export_selection

Config = Dict[str, Any]
logger = logging.getLogger(__name__)


def training_argument_parser(default_config: str, helps: Mapping[str, str], export_help: str, epilog: str
                             ) -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` (``--config-file`` defaulting to ``default_config``, ``--eval-only``,
    ``--resume``, ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``, ``KEY=VALUE`` overrides)
    with ``--overwrite``, ``--stitch``, ``--report-dir``, ``--pareto-from``, ``--export-stitch`` (``export_help``
    says what it writes) and the latency flags; ``helps`` replaces the help of detectron2's flags by their ``dest``
    (``config_file``, ``resume``, ``eval_only``, ``opts``)."""
    from detectron2.engine import default_argument_parser

    p = default_argument_parser(epilog=epilog)
    p.set_defaults(config_file=default_config)
    for action in p._actions:  # argparse has no public setter for the help of an added flag
        action.help = helps.get(action.dest, action.help)
    use_launch_defaults(p)
    p.add_argument("--overwrite", action="store_true",
                   help="train afresh into a train.output_dir that holds a run, deleting that run's checkpoints, "
                        "logs, config, reports and exported stitches first; with --eval-only --export-stitch: "
                        "replace exported stitches that exist")
    p.add_argument("--stitch", default="all",
                   help="stitches to evaluate (after training, or with --eval-only): all | ID[,ID...] | pareto | none")
    p.add_argument("--report-dir", metavar="DIR",
                   help="per-stitch report directory (default: <train.output_dir>/stitch_report_<dataloader."
                        "test_name>)")
    p.add_argument("--pareto-from", metavar="FILE",
                   help=f"{RESULTS_FILE} whose Pareto frontier --stitch pareto evaluates (default: the report "
                        "directory's)")
    p.add_argument("--export-stitch", metavar="ID[,ID]|pareto|best:G", help=export_help)
    add_latency_arguments(p)
    return p


def check_eval_only_flags(args: argparse.Namespace) -> argparse.Namespace:
    """``ValueError`` for ``--eval-only`` with ``--resume`` or ``--overwrite`` (allowed with ``--export-stitch``:
    it replaces exported stitches); returns ``args``."""
    given = [flag for flag, on in (("--resume", args.resume),
                                   ("--overwrite", args.overwrite and args.export_stitch is None)) if on]
    if args.eval_only and given:
        raise ValueError(f"--eval-only evaluates a checkpoint and trains nothing: drop {' and '.join(given)}")
    return args


def tagged_checkpoint(output_dir: str, flag: str) -> str:
    """The checkpoint ``<output_dir>/last_checkpoint`` names, for ``flag`` (``--resume`` or ``--eval-only``); errors
    say how to go on."""
    try:
        return last_checkpoint(output_dir)
    except (FileNotFoundError, ValueError) as exc:
        fix = ("start afresh without --resume (with --overwrite if the directory holds a run)" if flag == "--resume"
               else "pass train.init_checkpoint=PATH, or train.output_dir of a training run")
        raise type(exc)(f"{flag}: {exc}. To go on: {fix}") from exc


def run_checkpoint(args: argparse.Namespace, output_dir: str, init_checkpoint: str) -> Tuple[List[str], Optional[str]]:
    """``(replaced, checkpoint)`` of a run: training, the earlier run's files ``--overwrite`` replaces in
    ``output_dir`` (``check_output_dir``) and the checkpoint ``--resume`` continues from (``None``: from scratch);
    with ``--eval-only``, nothing replaced and the checkpoint evaluated, ``init_checkpoint`` or the one
    ``<output_dir>/last_checkpoint`` names."""
    if args.eval_only:
        return [], init_checkpoint or tagged_checkpoint(output_dir, "--eval-only")
    replaced = check_output_dir(output_dir, args.resume, args.overwrite)
    return replaced, tagged_checkpoint(output_dir, "--resume") if args.resume else None


def run_process(args: argparse.Namespace, load_config: Callable[[str, Sequence[str]], Config],
                run: Callable[[Config, argparse.Namespace, DistContext, Callable[[str], None]], Dict[str, Any]],
                run_logging: Callable[[int], ContextManager[Callable[[str], None]]]) -> Dict[str, Any]:
    """One process of the job (alone, one of torchrun's, or one that detectron2's ``launch`` started): load the
    config, join the process group, set up logging and hold ``train.output_dir`` (``lock_run_dir``) while
    ``run(cfg, args, ctx, log_to_file)`` runs."""
    cfg = load_config(args.config_file, args.opts)
    ctx = init_distributed(cfg["train"]["device"])
    try:
        with run_logging(ctx.rank) as log_to_file, lock_run_dir(cfg["train"]["output_dir"], args.eval_only,
                                                                ctx.is_main):
            return run(cfg, args, ctx, log_to_file)
    finally:
        destroy_process_groups()


def launch_job(args: argparse.Namespace, load_config: Callable[[str, Sequence[str]], Config],
           process: Callable[[argparse.Namespace], Any]) -> None:
    """The command line as detectron2 runs it: ``--num-gpus N`` processes per machine through ``launch``
    (``--num-gpus 1``, the default, and torchrun's processes run in this process), started once the config loads and
    the machine has the processes' devices (``snnet_core.cli.launch_command``)."""
    device = load_config(args.config_file, args.opts)["train"]["device"]
    launch_command(process, args, device, "train.device")


def export_stitches(args: argparse.Namespace, export_ids: Optional[Sequence[int]], space: StitchSpace,
                    report_dir: str, output_dir: str, task: str, save: Callable[[str, int], None]) -> List[str]:
    """Write the stitches ``--export-stitch`` chooses, ``save(path, stitch id)`` each to
    ``<output_dir>/stitch_<ID>/model_final.pth`` beside the plot of where it sits in the report; returns the paths.
    ``export_ids``: the ids resolved before training, or ``None`` for a choice from the report (``pareto``,
    ``best:G``) in ``report_dir``, its targets checked now."""
    if export_ids is None:
        export_ids = resolve_export_selection(args.export_stitch, space, report_dir, task=task)
        check_export_targets(output_dir, export_ids, args.overwrite)
    paths = []
    for stitch_id in export_ids:
        path = os.path.join(export_dir(output_dir, stitch_id), "model_final.pth")
        save(path, stitch_id)
        logger.info("exported stitch %d (%s) to %s", stitch_id, space[stitch_id].route, path)
        plot_exported_stitch(report_dir, stitch_id, os.path.dirname(path), task)
        paths.append(path)
    return paths

