"""The detectron2 application skeleton of the SN-Net projects: one ``train_net.py`` flow for every task.

``D2App`` holds what does not depend on the task: the command line (detectron2's ``default_argument_parser`` with
the shared flags ``--stitch``, ``--pareto-from``, ``--report-dir``, ``--export-stitch``, ``--measure-latency``,
``--overwrite``; ``--num-gpus`` through detectron2's ``launch``), the run directory (``snnet_core.io.run_dir``:
held while a run works in it, ``--resume`` / ``--overwrite``), the training loop (detectron2's trainer with LS init
of the stitching layers before the first iteration, a stitch per iteration drawn by ROS or uniformly
(``snnet.sampling``), per-iteration seeding and strict atomic checkpoints that record the stitch space and sampler, so
``--resume`` continues exactly and ``--eval-only`` rebuilds the trained space), and ``--eval-only``: the per-stitch
report (``OUTPUT_DIR/stitch_report_<test set>/``, its run key, latency), ``--export-stitch`` and a baseline's evaluation.

A project subclasses it (as detectron2's ``DefaultTrainer`` is subclassed) and gives what is its own: ``kind``,
``project`` and ``results_task``; the config checks, the datasets, the stitched part of its model, its FLOPs table,
loaders, LS-init images, per-stitch report, export and eval input size.
"""
from __future__ import annotations

import abc
import argparse
import contextlib
import logging
import os
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_argument_parser, default_setup, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm
from fvcore.common.param_scheduler import ParamScheduler
from omegaconf import DictConfig, OmegaConf

from snnet_core.cli import launch_command, use_launch_defaults
from snnet_core.d2.checkpoint import PeriodicCheckpointer, StrictDetectionCheckpointer
from snnet_core.d2.console import LOG_FILE_ONLY, explain_missing_compiled_ops, setup_run_logging
from snnet_core.d2.hooks import IterationSeedHook, StitchSamplingHook, StitchSelector, unwrap
from snnet_core.distributed import destroy_process_groups, run_on_main
from snnet_core.evaluation.latency import write_latency_info
from snnet_core.evaluation.latency_options import LatencyOptions, add_latency_arguments, latency_options
from snnet_core.evaluation.report import RESULTS_FILE, load_results, select_stitches
from snnet_core.io.atomic_io import file_sha256
from snnet_core.io.config_io import (
    Check, apply_overrides, check_config_kind, input_size_problem, integer, load_config_file, local_checkpoint,
    number, one_of,
)
from snnet_core.io.file_claims import check_checkpoint_path
from snnet_core.io.run_dir import (
    check_export_targets, check_output_dir, clear_run, command_line_sets, eval_size_for_checkpoint, last_checkpoint,
    lock_run_dir, remove_killed_writes,
)
from snnet_core.model.backbone_lora import describe_backbone_lora
from snnet_core.model.checkpoint import read_checkpoint_file
from snnet_core.model.flops import FlopsTable
from snnet_core.model.snnet import StitchedViT
from snnet_core.model.stitch_space import ROUTE_TYPES, evaluated_route_types
from snnet_core.select import export_reads_report, plot_exported_stitch, resolve_export_selection
from snnet_core.training.ls_init import describe_ls_init
from snnet_core.training.sampling import SAMPLINGS, build_sampler, describe_sampler
from snnet_core.training.train_log import training_writers

logger = logging.getLogger(__name__)

EVAL_SIZE = "eval_size"  # checkpoint entry: snnet.flops_input_size (H, W) of the training run (as depth's)
# checkpoint entries of an SN-Net's training run: the route types of its stitch space and its sampler (a checkpoint
# without them was trained over every route type with ROS)
ROUTE_TYPES_ENTRY, SAMPLING_ENTRY = "route_types", "sampling"
TRAINED_DEFAULTS = {ROUTE_TYPES_ENTRY: list(ROUTE_TYPES), SAMPLING_ENTRY: "ros"}


def build_device(cfg: DictConfig) -> torch.device:
    """``train.device``; ``RuntimeError`` naming the fix for CUDA without a GPU."""
    device = torch.device(cfg.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no GPU is visible: pass train.device=cpu to run on CPU")
    return device


def training_seed(cfg: DictConfig) -> int:
    """``train.seed``, or (``train.seed < 0``) a random seed shared by all ranks."""
    return cfg.train.seed if cfg.train.get("seed", -1) >= 0 else comm.shared_random_seed()


def build_lr_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer
                       ) -> Union[ParamScheduler, torch.optim.lr_scheduler.LRScheduler]:
    """``cfg.lr_multiplier`` for detectron2's ``hooks.LRScheduler``: an fvcore ``ParamScheduler`` (detectron2's
    multiplier, one factor for every param group) or, where its LazyCall takes an ``optimizer`` (set here to the
    run's, as ``cfg.optimizer.params.model`` is to the model), a torch ``LRScheduler`` on it (per-group rules, e.g.
    mmengine's absolute floor). The hook checkpoints a torch scheduler's state; ``--resume`` restores it."""
    if "optimizer" in cfg.lr_multiplier:
        cfg.lr_multiplier.optimizer = optimizer
    return instantiate(cfg.lr_multiplier)


def resume_checkpoint(output_dir: str) -> str:
    """The checkpoint ``--resume`` continues from (the one ``last_checkpoint`` names); a directory without one (e.g.
    a run killed while writing its first checkpoint) is refused before any compute, rather than trained from
    iteration 0 with a second history appended to its metrics.json."""
    try:
        return last_checkpoint(output_dir)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--resume: {exc}. To go on: start afresh without --resume (with --overwrite if the "
                                "directory holds a run)") from exc


def eval_checkpoint(cfg: DictConfig) -> str:
    """The weights ``--eval-only`` evaluates: ``train.init_checkpoint``, else the checkpoint ``last_checkpoint`` of
    ``train.output_dir`` names (then also set as ``train.init_checkpoint``)."""
    if cfg.train.init_checkpoint:
        return cfg.train.init_checkpoint
    try:
        path = last_checkpoint(cfg.train.output_dir)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--eval-only needs the weights to evaluate: pass train.init_checkpoint=PATH, or the "
                                f"train.output_dir of a training run ({exc})") from exc
    logger.info("evaluating %s, the checkpoint %s names", path, os.path.join(cfg.train.output_dir, "last_checkpoint"))
    cfg.train.init_checkpoint = path
    return path


def load_weights(model: nn.Module, path: str) -> Dict:
    """Load a trained model strictly; returns the checkpoint's other entries (``iteration``, ``EVAL_SIZE``, ...
    where recorded)."""
    if "://" not in path:
        check_checkpoint_path(path, "checkpoint", " (train.init_checkpoint)")
    return StrictDetectionCheckpointer(model).load(path)


def anchor_patch_size(anchor_cfg: DictConfig) -> Optional[int]:
    """The patch size of an anchor's ``build_anchor`` LazyCall (built on the meta device: no memory, no weights);
    ``None`` if it does not build (instantiating the model then names the problem)."""
    try:
        with torch.device("meta"):
            return int(instantiate(OmegaConf.merge(anchor_cfg, {"pretrained": None})).patch_embed.patch_size[0])
    except Exception:
        return None


def checkpoint_problems(cfg: DictConfig, keys: Sequence[str]) -> List[str]:
    """Remote checkpoints at ``keys`` of ``cfg`` that are not in detectron2's download cache; a cached one is
    replaced by its local file."""
    problems = []
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value:
            try:
                OmegaConf.update(cfg, key, local_checkpoint(value, key))
            except FileNotFoundError as exc:
                problems.append(str(exc))
    return problems


def training_checks() -> Dict[str, Check]:
    """The checks of the keys every project's training reads (``train.*``, ``snnet.*``, the learning rate)."""
    return {
        "train.max_iter": integer(1), "train.log_period": integer(1), "train.eval_period": integer(0, note="0: off"),
        "train.checkpointer.period": integer(1), "train.checkpointer.max_to_keep": integer(1),
        "train.seed": integer(note="< 0: a random seed"), "optimizer.lr": number(0, low_open=True),
        "optimizer.weight_decay": number(0), "dataloader.train.total_batch_size": integer(1),
        "dataloader.train.num_workers": integer(0),
        "snnet.ros_step_gflops": number(0, low_open=True, note="GFLOPs"), "snnet.sampler_seed": integer(0),
        "snnet.sampling": one_of(*SAMPLINGS),
        "snnet.ls_init_images": integer(0, note="0: no LS init, default init"),
    }


def evaluation_checks() -> Dict[str, Check]:
    """The checks of the keys every project's evaluation reads."""
    return {"dataloader.test.num_workers": integer(0),
            "snnet.eval_group_size": integer(1, note="stitches per data pass"),
            "snnet.eval_share_prefixes": one_of(True, False)}


def trained_settings(path: str) -> Optional[Dict]:
    """``{"route_types", "sampling"}`` the SN-Net training run that wrote the checkpoint ``path`` used (read
    memory-mapped, the weights untouched); ``None`` for what no training run of these projects wrote (a model-zoo
    ``.pkl``, a URL, an exported stitch) and for a file torch cannot read (``load_weights`` then names it)."""
    if not (path.endswith(".pth") and os.path.isfile(path)):
        return None
    try:
        state = read_checkpoint_file(path)
    except RuntimeError:
        return None
    if not isinstance(state, dict) or EVAL_SIZE not in state:
        return None
    return {k: state.get(k, default) for k, default in TRAINED_DEFAULTS.items()}


def report_run_key(weights: str, iteration: Optional[int], test_names: Sequence[str],
                   input_size: Tuple[int, int], latency: Optional[LatencyOptions]) -> str:
    """The per-stitch report's run key: the weights' content (or name), their iteration, the test sets and the
    input size (and the latency settings): reports of other runs are never mixed into one."""
    content = run_on_main(lambda: f"sha256:{file_sha256(weights)[:16]}" if os.path.isfile(weights) else weights)
    key = f"{content}@iter{iteration}|{'+'.join(test_names)}|{input_size[0]}x{input_size[1]}"
    return key + (latency.run_key() if latency is not None else "")


class D2App(abc.ABC):
    """One SN-Net project's ``train_net.py`` on detectron2 (see the module docstring); a project implements the
    abstract methods (its task's part)."""

    kind = ""  # the config kind (snnet_core.io.config_io.check_config_kind: "detection", "segmentation")
    project = ""  # the project's package logger ("projects.snnet_vitdet")
    results_task = ""  # tags the per-stitch results files (another task's are refused)
    export_help = "a standalone model of that stitch"  # what --export-stitch writes, for --help
    backbone_lora_key = ""  # the config key of the SN-Net's backbone_lora_rank (checked, named in the training log)
    route_types_key = ""  # the config key of the SN-Net's route_types (its stitch space), beside backbone_lora_key

    def __init__(self, epilog: Optional[str] = None):
        """``epilog``: the end of ``--help`` (the script's docstring)."""
        self.epilog = epilog

    # --- the task's part ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    def check_config(self, cfg: DictConfig, training: bool, source: str) -> None:
        """Every value the run reads, before any work (one ``ConfigError`` lists all problems)."""

    @abc.abstractmethod
    def prepare_data(self, cfg: DictConfig, training: bool) -> None:
        """Register the config's datasets and check their files (and, ``training``, that they can be trained on)."""

    @abc.abstractmethod
    def test_names(self, cfg: DictConfig) -> List[str]:
        """The test datasets' names (the report directory's and the run key's)."""

    @abc.abstractmethod
    def stitched(self, model: nn.Module) -> Optional[StitchSelector]:
        """The stitched part of ``model`` (``set_stitch``, ``space``), ``None`` for a baseline."""

    @abc.abstractmethod
    def snnet(self, model: nn.Module) -> StitchedViT:
        """The ``StitchedViT`` of an SN-Net ``model``."""

    @abc.abstractmethod
    def flops_table(self, cfg: DictConfig, model: nn.Module) -> FlopsTable:
        """Per-stitch GFLOPs at ``snnet.flops_input_size`` of the whole model (counted on one process)."""

    @abc.abstractmethod
    def build_train_loader(self, cfg: DictConfig, seed: int, start_iter: int):
        """``dataloader.train`` from iteration ``start_iter`` on (batch ``i`` a function of ``(seed, i)``)."""

    @abc.abstractmethod
    def ls_init(self, cfg: DictConfig, model: nn.Module) -> None:
        """LS init of the stitching layers from ``snnet.ls_init_images`` training images (all ranks)."""

    @abc.abstractmethod
    def do_test(self, cfg: DictConfig, model: nn.Module) -> Dict:
        """The metrics of ``model`` on ``dataloader.test`` (a baseline; an SN-Net's ``snnet.eval_stitches``)."""

    @abc.abstractmethod
    def stitch_report(self, cfg: DictConfig, model: nn.Module, stitch_ids: List[int], table: FlopsTable,
                      report_dir: str, run_key: str, group_size: Optional[int],
                      latency: Optional[LatencyOptions]) -> Dict:
        """The per-stitch report of ``stitch_ids`` into ``report_dir`` (all ranks; the record on the main one)."""

    @abc.abstractmethod
    def export(self, cfg: DictConfig, model: nn.Module, stitch_id: int) -> Dict[str, str]:
        """Write stitch ``stitch_id`` alone under ``OUTPUT_DIR/stitch_<ID>/``; returns ``{"config", "weights"}``."""

    @abc.abstractmethod
    def set_eval_input_size(self, cfg: DictConfig, model: nn.Module, size: Tuple[int, int]) -> None:
        """Evaluate at ``size`` ``(H, W)``: ``snnet.flops_input_size`` and the test-time resize."""

    # --- shared ------------------------------------------------------------------------------------------------
    def model_summary(self, model: nn.Module) -> str:
        """One line: the model's class, the stitches of its SN-Net (if any) and its parameters."""
        stitched = self.stitched(model)
        stitches = f" with an SN-Net of {len(stitched.space)} stitches" if stitched is not None else ""
        params = sum(p.numel() for p in model.parameters())
        return f"{type(unwrap(model)).__name__}{stitches}, {params / 1e6:.2f}M parameters"

    def build_model(self, cfg: DictConfig) -> nn.Module:
        """``cfg.model`` on ``train.device``; its module tree goes to log.txt, a one-line summary to the console."""
        model = instantiate(cfg.model)
        logger.info("Model:\n%s", model, extra=LOG_FILE_ONLY)
        logger.info("model: %s (module tree in log.txt)", self.model_summary(model))
        return model.to(build_device(cfg))

    def config_problems(self, cfg: DictConfig, anchors: Sequence[str]) -> List[str]:
        """Problems ``check_values`` does not see: ``snnet.flops_input_size`` not a multiple of the patch size of
        the anchor at the first of ``anchors`` (config keys of ``build_anchor`` LazyCalls), remote checkpoints
        (``train.init_checkpoint``, the anchors' ``pretrained``) missing from detectron2's download cache."""
        present = [key for key in anchors if isinstance(OmegaConf.select(cfg, key), DictConfig)]
        patch = anchor_patch_size(OmegaConf.select(cfg, present[0])) if present else None
        size = OmegaConf.select(cfg, "snnet.flops_input_size")
        more = [input_size_problem("snnet.flops_input_size", size, patch)] if patch and size is not None else []
        pretrained = [f"{key}.pretrained" for key in present if OmegaConf.select(cfg, f"{key}.pretrained")]
        return [p for p in more if p] + checkpoint_problems(cfg, ["train.init_checkpoint"] + pretrained)

    def load_config(self, args: argparse.Namespace) -> DictConfig:
        """The config file (``load_config_file``: a YAML file is read as data) with the command line's
        ``key=value`` overrides (a key the config does not hold is refused, the closest keys named), checked
        (``check_config``); another project's config is named as such."""
        cfg = load_config_file(args.config_file)
        sections = ("model", "dataloader", "train") + (() if args.eval_only else ("optimizer", "lr_multiplier"))
        check_config_kind(cfg, args.config_file, self.kind, sections)
        cfg = apply_overrides(cfg, args.opts, args.config_file)
        self.check_config(cfg, not args.eval_only, args.config_file)
        return cfg

    def setup(self, cfg: DictConfig, args: argparse.Namespace) -> None:
        """detectron2's ``default_setup`` (config.yaml, log.txt, seeds) with the console / log.txt split of
        ``snnet_core.d2.console``."""
        setup_run_logging(cfg.train.output_dir, self.project)
        default_setup(cfg, args)
        explain_missing_compiled_ops()

    def shared_flops_table(self, cfg: DictConfig, model: nn.Module) -> FlopsTable:
        """``flops_table`` counted on the main process and shared with all ranks (so every rank bins the stitches
        identically for ROS)."""
        return run_on_main(lambda: self.flops_table(cfg, unwrap(model)))

    def report_dir(self, args: argparse.Namespace, cfg: DictConfig) -> str:
        """The per-stitch report directory: ``--report-dir`` or ``OUTPUT_DIR/stitch_report_<test datasets>``."""
        return args.report_dir or os.path.join(cfg.train.output_dir, "stitch_report_" + "+".join(self.test_names(cfg)))

    def configured_settings(self, cfg: DictConfig) -> Dict[str, Tuple[str, object]]:
        """``{checkpoint entry: (config key, value)}`` of the stitch space and sampler ``cfg`` trains (an absent key:
        its default, every route type / ROS)."""
        route_types = OmegaConf.select(cfg, self.route_types_key) if self.route_types_key else None
        sampling = OmegaConf.select(cfg, "snnet.sampling")
        return {ROUTE_TYPES_ENTRY: (self.route_types_key, TRAINED_DEFAULTS[ROUTE_TYPES_ENTRY] if route_types is None
                                    else list(route_types)),
                SAMPLING_ENTRY: ("snnet.sampling", TRAINED_DEFAULTS[SAMPLING_ENTRY] if sampling is None else sampling)}

    def check_resumed_settings(self, cfg: DictConfig, checkpoint: str) -> None:
        """``--resume`` continues the stitch space and sampler of ``checkpoint``'s run: another value of
        ``route_types_key`` or ``snnet.sampling`` is refused, naming it, before any work."""
        trained = trained_settings(checkpoint)
        if trained is None:
            return
        differ = [f"{key}={value} (trained with {trained[entry]})"
                  for entry, (key, value) in self.configured_settings(cfg).items() if value != trained[entry]]
        if differ:
            raise ValueError(f"--resume: {checkpoint} was trained with another stitch space or sampler: "
                             f"{'; '.join(differ)}. Resume with the values it was trained with, or train afresh "
                             "(--overwrite)")

    def use_trained_space(self, args: argparse.Namespace, cfg: DictConfig, checkpoint: str) -> None:
        """``--eval-only`` builds the stitch space ``checkpoint`` was trained in: its route types replace the
        config's (logged), unless the command line sets ``route_types_key`` to some of them (a sub-space, ids kept);
        route types it never trained are refused."""
        parent = self.route_types_key.rpartition(".")[0]
        trained = trained_settings(checkpoint) if isinstance(OmegaConf.select(cfg, parent), DictConfig) else None
        if trained is None:
            return
        key, configured = self.configured_settings(cfg)[ROUTE_TYPES_ENTRY]
        chosen = evaluated_route_types(trained[ROUTE_TYPES_ENTRY], configured, command_line_sets(args.opts, key), key,
                                       checkpoint)
        if chosen != configured:
            logger.info("evaluating the stitch space %s was trained in: %s=%s (the config says %s)", checkpoint, key,
                        chosen, configured)
            OmegaConf.update(cfg, key, chosen)

    def do_train(self, args: argparse.Namespace, cfg: DictConfig) -> None:
        """detectron2's LazyConfig training loop plus LS init and per-iteration stitch sampling (``snnet.sampling``).

        Resumable exactly: RNGs seeded per iteration (``IterationSeedHook``), data a function of the iteration
        (``build_train_loader``), checkpoints written atomically with the trainer state.
        """
        model = self.build_model(cfg)
        on_gpu = next(model.parameters()).device.type == "cuda"
        cfg.optimizer.params.model = model
        optim = instantiate(cfg.optimizer)

        ddp = dict(cfg.train.ddp)
        if not on_gpu:  # gloo on CPU: no device ids, no fp16 gradient compression
            ddp.update(device_ids=None, fp16_compression=False)
        model = create_ddp_model(model, **ddp)
        amp = cfg.train.amp.enabled and on_gpu
        if cfg.train.amp.enabled and not on_gpu:
            logger.info("AMP is for GPU training: training in fp32 on %s", cfg.train.device)
        trainer = (AMPTrainer if amp else SimpleTrainer)(model, None, optim)  # data loader: once start_iter is known
        stitched = self.stitched(model)
        extras = {} if cfg.get("snnet") is None else {EVAL_SIZE: [int(s) for s in cfg.snnet.flops_input_size]}
        if stitched is not None:  # what --eval-only rebuilds and --resume must continue
            extras.update({ROUTE_TYPES_ENTRY: list(stitched.space.route_types),
                           SAMPLING_ENTRY: self.configured_settings(cfg)[SAMPLING_ENTRY][1]})
        checkpointer = StrictDetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer, extras=extras)
        seeding = IterationSeedHook(training_seed(cfg))

        sampling = None
        if stitched is not None:
            table = self.shared_flops_table(cfg, model)
            sampler = build_sampler(extras[SAMPLING_ENTRY], table.gflops, cfg.snnet.ros_step_gflops,
                                    cfg.snnet.sampler_seed, "snnet.sampling")
            logger.info("%s (%s, snnet.sampling=%s; %.4g-%.4g GFLOPs at %s)",
                        describe_sampler(sampler, stitched.space.route_types), self.route_types_key,
                        extras[SAMPLING_ENTRY], min(table.gflops.values()), max(table.gflops.values()),
                        table.input_size)
            sampling = StitchSamplingHook(stitched, sampler, cfg.train.output_dir)
        trainer.register_hooks([
            hooks.IterationTimer(),
            seeding,
            sampling,
            hooks.LRScheduler(scheduler=build_lr_scheduler(cfg, optim)),
            PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: self.do_test(cfg, model))
            if cfg.train.eval_period > 0 else None,
        ])  # the writers come last, once the start iteration is known

        if comm.is_main_process():
            remove_killed_writes(cfg.train.output_dir)
        resumed = args.resume and checkpointer.has_checkpoint()
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)  # trainer state and seed too
        start_iter = trainer.iter + 1 if resumed else 0
        if resumed and start_iter >= cfg.train.max_iter:
            if not os.path.isfile(os.path.join(cfg.train.output_dir, "model_final.pth")) and comm.is_main_process():
                logger.info("training had ended at iteration %d but model_final.pth is missing: writing it",
                            trainer.iter)
                checkpointer.save("model_final", iteration=trainer.iter)
            return
        if comm.is_main_process():  # a resumed run cuts metrics.json back and purges TensorBoard's later events
            writers = training_writers(cfg.train.output_dir, cfg.train.max_iter, start_iter)
            trainer.register_hooks([hooks.PeriodicWriter(writers, period=cfg.train.log_period)])
        trainer.data_loader = self.build_train_loader(cfg, seeding.seed, start_iter)
        if stitched is not None:
            logger.info(describe_backbone_lora(model, self.snnet(model).backbone_lora_rank, self.backbone_lora_key))
        if stitched is not None and not resumed:
            logger.info(describe_ls_init(cfg.snnet.ls_init_images, "snnet.ls_init_images"))
            if cfg.snnet.ls_init_images > 0:
                self.ls_init(cfg, model)
        trainer.train(start_iter, cfg.train.max_iter)

    def export_selection(self, args: argparse.Namespace, cfg: DictConfig, model: nn.Module) -> List[int]:
        """The stitches ``--export-stitch`` names (``pareto`` / ``best:G``: read from the per-stitch report), refused
        where exported before unless ``--overwrite`` (``check_export_targets``)."""
        stitched = self.stitched(model)
        if stitched is None:
            raise ValueError(f"--export-stitch needs an SN-Net model; this config's {type(unwrap(model)).__name__} "
                             "has one ViT: it is deployable as it is")
        ids = run_on_main(lambda: resolve_export_selection(args.export_stitch, stitched.space,
                                                           self.report_dir(args, cfg), task=self.results_task))
        run_on_main(lambda: check_export_targets(cfg.train.output_dir, ids, args.overwrite))
        return ids

    def do_export(self, args: argparse.Namespace, cfg: DictConfig, model: nn.Module,
                  ids: Optional[List[int]] = None) -> List[Dict[str, str]]:
        """``--export-stitch ID[,ID]|pareto|best:G``: standalone models under ``OUTPUT_DIR/stitch_<ID>/`` (``ids``:
        ``export_selection``'s, where it was called before), each with the report's plot, the stitch ringed."""
        ids = self.export_selection(args, cfg, model) if ids is None else ids
        stitched = self.stitched(model)
        written = []
        if comm.is_main_process():
            for sid in ids:
                paths = self.export(cfg, model, sid)
                logger.info("exported stitch %d (%s): %s", sid, stitched.space[sid].route, paths)
                plot_exported_stitch(self.report_dir(args, cfg), sid, os.path.dirname(paths["weights"]),
                                     self.results_task)
                written.append(paths)
        return written

    def do_stitch_report(self, args: argparse.Namespace, cfg: DictConfig, model: nn.Module,
                         iteration: Optional[int]) -> Dict:
        """``--eval-only`` on the stitched model: the resumable per-stitch report of ``--stitch``."""
        stitched = self.stitched(model)
        report_dir = self.report_dir(args, cfg)
        pareto_from = args.pareto_from or os.path.join(report_dir, RESULTS_FILE)
        stitch_ids = run_on_main(lambda: select_stitches(args.stitch, stitched.space, pareto_from,
                                                         task=self.results_task))
        table = self.shared_flops_table(cfg, model)
        latency = latency_options(args, next(model.parameters()).device, self.snnet(model).patch_size,
                                  table.input_size, cfg.train.amp.enabled)
        run_key = report_run_key(cfg.train.init_checkpoint, iteration, self.test_names(cfg), table.input_size,
                                 latency)
        group_size = cfg.snnet.eval_group_size if cfg.snnet.eval_share_prefixes else None
        record = self.stitch_report(cfg, model, stitch_ids, table, report_dir, run_key, group_size, latency)
        if latency is not None and comm.is_main_process():
            write_latency_info(report_dir, latency.info())
            record = load_results(report_dir)
        return record

    def evaluate(self, args: argparse.Namespace, cfg: DictConfig) -> Optional[Dict]:
        """``--eval-only``: the per-stitch report (``--stitch``), then ``--export-stitch``; a baseline's metrics."""
        checkpoint = eval_checkpoint(cfg)
        self.use_trained_space(args, cfg, checkpoint)
        model = self.build_model(cfg)
        extras = load_weights(model, checkpoint)
        stitched = self.stitched(model)
        if args.measure_latency and (stitched is None or args.stitch is None):
            raise ValueError("--measure-latency times the stitches of the per-stitch report: it needs an SN-Net "
                             "model and --stitch all|pareto|ID[,ID]")
        if stitched is not None:
            key = "snnet.flops_input_size"
            size, source = eval_size_for_checkpoint(cfg.snnet.flops_input_size, extras.get(EVAL_SIZE),
                                                    command_line_sets(args.opts, key), checkpoint, key)
            if source != "config":
                self.set_eval_input_size(cfg, model, size)
        export_ids = None
        if args.export_stitch is not None and not export_reads_report(args.export_stitch):
            export_ids = self.export_selection(args, cfg, model)  # ids: refused before the evaluation, not after
        report = None
        if stitched is not None and args.stitch is not None:
            report = self.do_stitch_report(args, cfg, model, extras.get("iteration"))
        if args.export_stitch is not None:
            self.do_export(args, cfg, model, export_ids)  # after the report, so pareto / best:G can read it
        if stitched is None:
            return self.do_test(cfg, model)
        return report

    def main(self, args: argparse.Namespace) -> Optional[Dict]:
        """Train (or ``--eval-only``: evaluate and export) as ``args`` say, holding ``train.output_dir`` (rank 0,
        ``snnet_core.io.run_dir.lock_run_dir``) from the moment the config is read to the end."""
        with contextlib.ExitStack() as held:
            return self.run(args, held.enter_context)

    def run(self, args: argparse.Namespace, hold: Callable[[ContextManager], object]) -> Optional[Dict]:
        if not args.eval_only and (args.stitch is not None or args.export_stitch is not None or args.measure_latency):
            raise ValueError("--stitch, --export-stitch and --measure-latency act on a trained model: add --eval-only "
                             "(evaluates train.init_checkpoint, default: the last checkpoint of train.output_dir)")
        if args.eval_only and args.overwrite and args.export_stitch is None:
            raise ValueError("--overwrite replaces the training run in train.output_dir (with --eval-only: exported "
                             "stitches, with --export-stitch): it does not go with --eval-only alone")
        cfg = self.load_config(args)
        hold(lock_run_dir(cfg.train.output_dir, args.eval_only, comm.is_main_process()))
        replaced = [] if args.eval_only else check_output_dir(cfg.train.output_dir, args.resume, args.overwrite)
        if args.resume and not args.eval_only:
            self.check_resumed_settings(cfg, resume_checkpoint(cfg.train.output_dir))
        self.prepare_data(cfg, not args.eval_only)
        if replaced and comm.is_main_process():
            clear_run(replaced)  # every check has passed; before log.txt is opened again
        comm.synchronize()
        self.setup(cfg, args)
        if replaced:
            logger.warning("--overwrite: deleted the previous run's %s",
                           ", ".join(os.path.relpath(p, cfg.train.output_dir) for p in replaced))
        if args.eval_only:
            return self.evaluate(args, cfg)
        self.do_train(args, cfg)
        return None

    def launched_main(self, args: argparse.Namespace) -> Optional[Dict]:
        """``main`` in a process started by ``launch``: destroys the process groups before the process exits
        (an exit right after the last collective can otherwise abort it, see ``destroy_process_groups``)."""
        try:
            return self.main(args)
        finally:
            destroy_process_groups()

    def build_argument_parser(self) -> argparse.ArgumentParser:
        """detectron2's ``default_argument_parser`` with the shared flags (``docs/engine.md``)."""
        parser = default_argument_parser(epilog=self.epilog)
        use_launch_defaults(parser)
        parser.add_argument("--overwrite", action="store_true",
                            help="train afresh into a train.output_dir that holds a run: deletes its checkpoints, "
                                 "logs, reports and exported stitches (keeps flops_cache/)")
        parser.add_argument("--stitch", default=None,
                            help="with --eval-only: stitches to evaluate, 'all' (default), 'pareto' or ids '0,1,5'")
        parser.add_argument("--pareto-from", default=None,
                            help="stitch_results.json whose Pareto frontier '--stitch pareto' evaluates "
                                 "(default: the report directory's)")
        parser.add_argument("--report-dir", default=None,
                            help="per-stitch report directory (default: OUTPUT_DIR/stitch_report_<test dataset>)")
        parser.add_argument("--export-stitch", default=None, metavar="ID[,ID]|pareto|best:G",
                            help="with --eval-only: write OUTPUT_DIR/stitch_<ID>/{model_final.pth,config.yaml}, "
                                 f"{self.export_help} (pareto / best:G read the per-stitch report)")
        add_latency_arguments(parser)
        return parser

    def cli(self, argv: Optional[List[str]] = None) -> None:
        """The command line: ``--num-gpus N`` processes per machine through detectron2's ``launch``, started once
        the config loads and the machine has the processes' devices (``snnet_core.cli.launch_command``)."""
        args = self.build_argument_parser().parse_args(argv)
        if args.eval_only and args.stitch is None and args.export_stitch is None:
            args.stitch = "all"
        device = self.load_config(args).train.get("device", "cuda")
        launch_command(self.launched_main, args, device, "train.device")

