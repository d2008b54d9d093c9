"""SN-Netv2 stitching engine: stitch space, stitching layers (LS init, LoRA SL), stitched ViT forward with
dense features, FLOPs table, ROS sampler, selection/export, per-stitch evaluation and report."""
import warnings

warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)  # fvcore
from .anchors import build_anchor, check_anchor_pair, load_anchor_checkpoint, read_state_dict
from .checkpoint import load_snnet, save_snnet
from .export import ExportedStitch, export_stitch
from .flops import FlopsTable, build_flops_table, count_gflops
from .latency import LATENCY_COLUMN, Latency, StitchLatencies, measure_latency, time_stitches, write_latency_info
from .ls_init import ls_init_stitching_layers
from .prefix_trie import classify_stitches, prefix_sharing_cost, run_stitches
from .report import evaluate_stitches, load_results, select_stitches, write_report
from .route import RouteOutput, tokens_to_map
from .sampling import ResourceConstrainedSampler, UniformSampler, flops_bins
from .select import choose_stitch
from .selection import best_under_budget, pareto_frontier
from .snnet import StitchedViT
from .stitch_space import FAST, ROUTE_TYPES, SLOW, Stitch, StitchSpace, map_out_indices_to_fast
from .stitching_layers import LeastSquaresAccumulator, StitchingLayer
from .upstream import (
    UpstreamConversion,
    convert_upstream_state_dict,
    load_upstream_checkpoint,
    stitch_id_from_upstream,
    upstream_stitch_id,
)

__all__ = [name for name in dir() if not name.startswith("_")]
