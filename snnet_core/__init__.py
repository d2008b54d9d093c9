"""SN-Netv2 stitching engine: stitch space, stitching layers (LS init, LoRA SL), stitched ViT forward with
dense features, FLOPs table, ROS sampler, selection/export, per-stitch evaluation and report."""
import importlib
import warnings
from typing import Any, List

warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)  # fvcore
# public names -> the module that defines them, imported on first use (PEP 562): a command pays only for the
# modules it uses, and ``python -m snnet_core.select`` does not find its module already imported by the package
_EXPORTS = {
    "model.anchors": ("build_anchor", "check_anchor_pair", "load_anchor_checkpoint", "read_state_dict"),
    "model.checkpoint": ("load_snnet", "save_snnet"),
    "model.export": ("ExportedStitch", "export_stitch"),
    "model.flops": ("FlopsTable", "build_flops_table", "count_gflops"),
    "evaluation.latency": ("LATENCY_COLUMN", "Latency", "StitchLatencies", "measure_latency", "time_stitches",
                           "write_latency_info"),
    "training.ls_init": ("ls_init_stitching_layers",),
    "evaluation.prefix_trie": ("classify_stitches", "prefix_sharing_cost", "run_stitches"),
    "evaluation.report": ("evaluate_stitches", "load_results", "select_stitches", "write_report"),
    "model.route": ("RouteOutput", "tokens_to_map"),
    "training.sampling": ("ResourceConstrainedSampler", "UniformSampler", "flops_bins"),
    "select": ("choose_stitch",),
    "evaluation.selection": ("best_under_budget", "pareto_frontier"),
    "evaluation.frontier_measures": ("FrontierMeasures", "frontier_measures"),
    "model.snnet": ("StitchedViT",),
    "model.stitch_space": ("FAST", "ROUTE_TYPES", "SLOW", "Stitch", "StitchSpace", "map_out_indices_to_fast"),
    "model.stitching_layers": ("LeastSquaresAccumulator", "StitchingLayer"),
    "model.upstream": ("UpstreamConversion", "convert_upstream_state_dict", "load_upstream_checkpoint",
                       "stitch_id_from_upstream", "upstream_stitch_id"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
