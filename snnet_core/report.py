"""Per-stitch evaluation loop and report (JSON, CSV, Markdown, PNG plot with the Pareto frontier).

``evaluate_stitches`` calls a task's ``evaluate(stitch_id) -> {metric: value}`` for every chosen stitch,
writes each result to ``stitch_results.json`` as soon as it is done (an interrupted run resumes without
redoing finished stitches), then writes the table and plot.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from tqdm import tqdm

from .atomic_io import write_json_atomic
from .flops import FlopsTable
from .selection import pareto_frontier
from .stitch_space import StitchSpace

RESULTS_FILE = "stitch_results.json"


def load_results(output_dir: str) -> Dict[str, dict]:
    """The results file of a previous (possibly interrupted) run, or an empty record."""
    path = os.path.join(output_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"{path} is not valid JSON ({exc}); move it away to start the evaluation afresh") from exc


def select_stitches(selection: str, space: StitchSpace, pareto_source: Optional[str] = None) -> List[int]:
    """Resolve ``all``, ``ID[,ID...]`` or ``pareto`` (frontier of a previous report's results file)."""
    if selection.strip() != "pareto":
        return space.parse_selection(selection)
    if pareto_source is None or not os.path.isfile(pareto_source):
        raise FileNotFoundError(
            f"--stitch pareto needs the results of a previous per-stitch evaluation ({RESULTS_FILE}); "
            f"not found at {pareto_source!r}. Run with --stitch all first (e.g. on a validation subset)."
        )
    with open(pareto_source) as f:
        record = json.load(f)
    rows = record["stitches"]
    primary, hib = record["primary_metric"], record["higher_is_better"]
    return pareto_frontier({int(k): r["gflops"] for k, r in rows.items()},
                           {int(k): r[primary] for k, r in rows.items()}, hib)


def evaluate_stitches(
    evaluate: Callable[[int], Mapping[str, float]],
    stitch_ids: Sequence[int],
    space: StitchSpace,
    flops: FlopsTable,
    output_dir: str,
    primary_metric: str,
    higher_is_better: bool = True,
    run_key: str = "",
    title: str = "SN-Net stitches",
    progress: bool = True,
) -> Dict[str, dict]:
    """Evaluate stitches, resumably, and write the report.

    Args:
        evaluate: ``stitch id -> {metric name: value}``.
        stitch_ids: stitches to evaluate.
        space, flops: the SN-Net's stitch space and FLOPs table (GFLOPs/params columns).
        output_dir: where ``stitch_results.json``, ``stitch_report.{csv,md,png}`` go.
        primary_metric: metric of the Pareto frontier and the plot; ``higher_is_better`` its direction.
        run_key: identifies the model being evaluated (e.g. checkpoint path and iteration). Resuming into
            a directory written for another ``run_key`` is refused rather than mixing results.

    Returns:
        the results record ``{"stitches": {id: row}, ...}``.
    """
    os.makedirs(output_dir, exist_ok=True)
    record = load_results(output_dir)
    if record and record.get("run_key") != run_key:
        raise RuntimeError(
            f"{os.path.join(output_dir, RESULTS_FILE)} holds results of another run "
            f"({record.get('run_key')!r}, this one is {run_key!r}); choose a new output directory"
        )
    record = record or {"run_key": run_key, "primary_metric": primary_metric,
                        "higher_is_better": higher_is_better, "stitches": {}}
    rows: Dict[str, dict] = record["stitches"]
    todo = [int(s) for s in stitch_ids if str(int(s)) not in rows]
    for sid in tqdm(todo, desc="evaluating stitches", unit="stitch", disable=not progress):
        stitch = space[sid]
        metrics = {k: float(v) for k, v in evaluate(sid).items()}
        if primary_metric not in metrics:
            raise KeyError(f"evaluate({sid}) returned {sorted(metrics)} without the primary metric {primary_metric!r}")
        rows[str(sid)] = {"id": sid, "type": stitch.kind, "route": stitch.route,
                          "gflops": flops.gflops[sid], "params_m": flops.params_m[sid], **metrics}
        write_json_atomic(os.path.join(output_dir, RESULTS_FILE), record)
    write_report(record, output_dir, title)
    return record


def write_report(record: Mapping, output_dir: str, title: str = "SN-Net stitches") -> List[int]:
    """Write CSV, Markdown and PNG from a results record; returns the Pareto-frontier ids."""
    rows = {int(k): v for k, v in record["stitches"].items()}
    primary, hib = record["primary_metric"], record["higher_is_better"]
    frontier = pareto_frontier({k: r["gflops"] for k, r in rows.items()},
                               {k: r[primary] for k, r in rows.items()}, hib)
    fixed = ["id", "type", "route", "gflops", "params_m"]
    metric_names = [k for k in next(iter(rows.values()), {}) if k not in fixed] if rows else []
    ordered = sorted(rows.values(), key=lambda r: (r["gflops"], r["id"]))
    on_front = set(frontier)
    with open(os.path.join(output_dir, "stitch_report.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fixed + metric_names + ["on_frontier"])
        for r in ordered:
            writer.writerow([r[k] for k in fixed + metric_names] + [r["id"] in on_front])
    with open(os.path.join(output_dir, "stitch_report.md"), "w") as f:
        f.write(f"# {title}\n\n{len(rows)} stitches; Pareto frontier on `{primary}` "
                f"({'higher' if hib else 'lower'} is better) marked with *.\n\n")
        header = ["id", "type", "route", "GFLOPs", "params (M)"] + metric_names + ["frontier"]
        f.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        for r in ordered:
            cells = [str(r["id"]), r["type"], f"`{r['route']}`", f"{r['gflops']:.4g}", f"{r['params_m']:.1f}"]
            cells += [f"{r[m]:.4g}" for m in metric_names] + ["*" if r["id"] in on_front else ""]
            f.write("| " + " | ".join(cells) + " |\n")
    if rows:
        plot_metric_vs_gflops(rows, frontier, primary, os.path.join(output_dir, "stitch_report.png"), title)
    return frontier


def plot_metric_vs_gflops(rows: Mapping[int, Mapping], frontier: Sequence[int], metric: str, path: str,
                          title: str) -> None:
    """Scatter of ``metric`` vs GFLOPs coloured by route type, frontier line, anchors as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colours = {"FS": "tab:blue", "SF": "tab:orange", "FSF": "tab:green", "SFS": "tab:purple"}
    for kind, colour in colours.items():
        pts = [(r["gflops"], r[metric]) for r in rows.values() if r["type"] == kind]
        if pts:
            ax.scatter(*zip(*pts), s=14, alpha=0.7, color=colour, label=kind)
    front = [(rows[i]["gflops"], rows[i][metric]) for i in frontier]
    ax.plot(*zip(*front), color="black", lw=1.2, label="Pareto frontier")
    anchors = [(r["gflops"], r[metric]) for r in rows.values() if r["type"] == "anchor"]
    if anchors:
        ax.scatter(*zip(*anchors), marker="*", s=220, color="gold", edgecolor="black", zorder=5, label="anchors")
    ax.set_xlabel("GFLOPs")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
