"""Save/load a whole SN-Net (anchors + stitching layers) with its architecture, safely (weights only), and the
recipe of one exported stitch's route, from which the projects rebuild a deployed stitch without its SN-Net."""
from __future__ import annotations

import os
import pickle
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Union, overload

import torch
import torch.nn as nn

from snnet_core.io.atomic_io import write_atomic
from snnet_core.io.file_claims import check_checkpoint_claims, check_checkpoint_path, state_bytes
from snnet_core.model.route import RoutePlan, Tap

if TYPE_CHECKING:  # annotations only: anchors.py can import this module's readers without an import cycle
    from snnet_core.model.snnet import StitchedViT

FORMAT = "snnet-v2"
# architecture keys added after checkpoints were written, with the value a checkpoint without them was written with
ARCHITECTURE_DEFAULTS = {"backbone_lora_rank": 0}


def save_snnet(path: str, snnet: StitchedViT, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write ``{'format', 'config', 'model', **extra}`` atomically (``extra`` must be tensors/primitives)."""
    state = {"format": FORMAT, "config": snnet.config(), "model": snnet.state_dict()}
    state.update(extra or {})
    write_atomic(path, lambda f: torch.save(state, f), binary=True)


def describe_load_error(path: str, exc: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in words: refused objects, or a truncated/corrupt file.

    torch's own message for a refused object advises ``weights_only=False``, which would run the file's code;
    this one keeps only the sentence naming what was refused.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if "torch.cuda.is_available() is False" in str(exc):  # map_location on a CUDA device, none present
        return (f"{path!r} was to be loaded onto a CUDA device, but this machine has no GPU torch can use "
                "(torch.cuda.is_available() is False); the file is not at fault. Load it on the CPU (the demos' "
                "--device cpu, the training scripts' train.device=cpu)")
    if isinstance(exc, pickle.UnpicklingError):
        refused = [line.split(". ")[0] for line in lines if "global" in line.lower()]
        if refused:
            return (f"{path!r} holds Python objects that a weights-only load refuses ({refused[0]}); it was not "
                    "loaded, as unpickling them could run code. Use a checkpoint of tensors and plain containers")
        lines = [line for line in lines if "unsupported" in line.lower()]
    if isinstance(exc, (EOFError, RuntimeError, pickle.UnpicklingError, IndexError)):  # IndexError: a pickle cut short
        size = os.path.getsize(path) if os.path.exists(path) else 0
        detail = lines[0].split(". ")[0] if lines else "unexpected end of file"
        return (f"{path!r} is truncated or corrupt ({size} bytes; {type(exc).__name__}: {detail}); it is not a "
                "complete torch checkpoint. Write it again, or use an earlier checkpoint")
    return f"could not read {path!r} ({type(exc).__name__}: {exc})"


def read_tagged_checkpoint(
    path: str, fmt: str, what: str, map_location: str | torch.device = "cpu", expected_bytes: Optional[int] = None
) -> Dict[str, Any]:
    """``torch.load(weights_only=True)`` a dict carrying ``{'format': fmt}``, with errors naming ``what``.

    ``expected_bytes``: bytes of the model it is read for; a file claiming far more is refused before it is read
    (``snnet_core.io.file_claims.check_checkpoint_claims``)."""
    check_checkpoint_path(path, what)
    check_checkpoint_claims(path, expected_bytes, what)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"could not read {what}: {describe_load_error(path, exc)}") from exc
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise RuntimeError(f"{path!r} is not an {what} (no '{fmt}' format tag)")
    return state


def read_checkpoint_file(path: str, what: str = "checkpoint", map_location: str | torch.device = "cpu",
                         allowed: Sequence[type] = ()) -> Any:
    """``torch.load(weights_only=True, mmap=True)`` of a file whose model is built from what it holds (a training
    checkpoint or an exported stitch): a missing file, one claiming more data than it holds on disk
    (``check_checkpoint_claims(path, None)``) or a corrupt one fails naming ``what`` and the file. ``allowed``:
    classes a weights-only load may also rebuild (e.g. ``argparse.Namespace`` in upstream's files)."""
    check_checkpoint_path(path, what)
    check_checkpoint_claims(path, None, what)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as exc:
        raise RuntimeError(f"could not read the {what}: {describe_load_error(path, exc)}") from exc


def architecture(config: Dict[str, Any]) -> Dict[str, Any]:
    """The part of ``StitchedViT.config()`` two SN-Nets must share for one's weights to load into the other
    (everything but how the anchors were built: a drop-path rate or a resampled position table size need not
    match, the signatures and shapes must)."""
    from snnet_core.model.snnet import ANCHOR_BUILDS

    return {k: v for k, v in {**ARCHITECTURE_DEFAULTS, **config}.items() if k != ANCHOR_BUILDS}


def load_snnet_state(state: Dict[str, Any], snnet: StitchedViT, path: str) -> None:
    """Load the ``save_snnet`` checkpoint dict ``state`` (read from ``path``) into ``snnet``, strictly; a
    ``RuntimeError`` names what differs when ``snnet`` has another architecture. ``snnet`` may hold some of the
    checkpoint's route types (a sub-space of the trained one: the same layers, its stitches keep their ids)."""
    expected, saved = architecture(snnet.config()), architecture(state["config"])
    if set(expected.get("route_types", ())) <= set(saved.get("route_types", ())):
        expected["route_types"] = saved["route_types"]
    if saved != expected:
        diff = [k for k in dict.fromkeys([*expected, *saved]) if saved.get(k) != expected.get(k)]
        raise RuntimeError(f"checkpoint {path!r} was saved for another SN-Net architecture: "
                           + "; ".join(f"{k}: checkpoint {saved.get(k)} vs model {expected.get(k)}" for k in diff))
    snnet.load_state_dict(state["model"])


@overload
def load_snnet(path: str, snnet: None = None, map_location: str | torch.device = "cpu",
               expected_bytes: Optional[int] = None) -> StitchedViT: ...


@overload
def load_snnet(path: str, snnet: StitchedViT, map_location: str | torch.device = "cpu",
               expected_bytes: Optional[int] = None) -> Dict[str, Any]: ...


def load_snnet(path: str, snnet: Optional[StitchedViT] = None, map_location: str | torch.device = "cpu",
               expected_bytes: Optional[int] = None) -> Union[StitchedViT, Dict[str, Any]]:
    """Read a checkpoint written by ``save_snnet``.

    - ``load_snnet(path, net)`` loads it into ``net`` (strict: same architecture, every weight) and returns the
      whole checkpoint dict (``extra`` entries included).
    - ``load_snnet(path)`` builds the SN-Net from the architecture stored in the checkpoint
      (``StitchedViT.from_config``: anchors by their ``build_anchor`` arguments, no pretrained file read), loads
      the weights and returns it in eval mode, on ``map_location``, ready for ``set_stitch``.

    ``expected_bytes``: bytes of all the weights the file holds for its model (default: ``snnet``'s; pass more when
    it also holds a task head). A file claiming several times more (``snnet_core.io.file_claims``; without ``snnet``:
    more than it holds on disk, as a compressed crafted file does) is refused before it is read.

    Raises ``FileNotFoundError`` for a missing file, ``IsADirectoryError`` for a directory (naming the file in it to
    give), ``CheckpointClaimError`` (a ``ValueError``) for a file claiming far more data than the model holds,
    ``RuntimeError`` for a corrupt one, one written for another architecture (naming the difference) or one whose
    anchors cannot be rebuilt from it (naming the fix).
    """
    if expected_bytes is None and snnet is not None:
        expected_bytes = state_bytes(snnet)
    state = read_tagged_checkpoint(path, FORMAT, "SN-Net checkpoint", map_location, expected_bytes)
    if snnet is not None:
        load_snnet_state(state, snnet, path)
        return state
    from snnet_core.model.snnet import StitchedViT

    try:
        net = StitchedViT.from_config(state["config"])
    except ValueError as exc:
        raise RuntimeError(f"cannot rebuild the SN-Net of {path!r}: {exc}") from exc
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:  # e.g. anchors a project changed after building them (ViTDet attention)
        raise RuntimeError(f"the SN-Net rebuilt from {path!r} does not hold its weights ({str(exc)[:300]}): its "
                           "anchors were changed after build_anchor (by a project's model code); build the model "
                           "with that project's code and pass it, load_snnet(path, net)") from exc
    return net.to(map_location).eval()


# --- one exported stitch, rebuilt without its SN-Net ---------------------------------------------------------
def route_recipe(snnet: StitchedViT, stitch_id: int) -> Dict[str, Any]:
    """Primitives describing what stitch ``stitch_id`` runs: enough, with its anchors' architecture, to rebuild
    its modules (``plan_from_recipe``) and load the weights of ``export_stitch(snnet, stitch_id)``."""
    stitch = snnet.space[stitch_id]
    plan = snnet.plan(stitch_id)
    used = set(plan.layer_names) | {name for _, _, name in _recipe_taps(plan) if name}
    return {
        "id": stitch.id, "route": stitch.route, "kind": stitch.kind,
        "embed_anchor": stitch.first_anchor, "finish_anchor": stitch.last_anchor,
        "layer_names": list(plan.layer_names),
        "taps": _recipe_taps(plan),
        "num_stages": plan.num_stages,
        "embed_dims": list(snnet.embed_dims),
        "layer_dims": [[spec.name, snnet.embed_dims[spec.source], snnet.embed_dims[spec.target]]
                       for spec in snnet.layer_specs() if spec.name in used],
    }


def _recipe_taps(plan: RoutePlan) -> List[list]:
    return [[pos, t.stage, t.projection_name] for pos, ts in sorted(plan.taps.items()) for t in ts]


def recipe_anchors(recipe: Dict[str, Any]) -> List[int]:
    """The anchors (0 fast, 1 slow; more: smallest first) whose modules the recipe's route uses."""
    used = {recipe["embed_anchor"], recipe["finish_anchor"]}
    used |= {int(name.split(".")[1]) for name in recipe["layer_names"] if name.startswith("anchors.")}
    return sorted(used)


def plan_from_recipe(recipe: Dict[str, Any], anchors: Mapping[int, nn.Module]) -> RoutePlan:
    """The ``RoutePlan`` of a ``route_recipe`` over ``anchors`` (``{anchor index: full-depth anchor}``, as built
    for the SN-Net, e.g. on the meta device): its blocks are taken by name, its stitching layers are new
    ``nn.Linear`` (merged layers). ``ExportedStitch(plan, ...)`` then copies only what the route runs."""
    if "layer_dims" in recipe:
        dims = {name: (int(d_in), int(d_out)) for name, d_in, d_out in recipe["layer_dims"]}
    else:  # a recipe written before layer_dims: two anchors, s2l maps fast to slow width, l2s back
        fast_dim, slow_dim = recipe["embed_dims"]
        dims = {"stitch_s2l": (fast_dim, slow_dim), "stitch_l2s": (slow_dim, fast_dim)}
    linears: Dict[str, nn.Module] = {}

    def module(name: str) -> nn.Module:
        kind, index = name.rsplit(".", 1)
        if name.startswith("anchors."):
            return anchors[int(kind.split(".")[1])].blocks[int(index)]
        if name not in linears:  # stitch_s2l.k / stitch_l2s.k / feature_proj.k
            linears[name] = nn.Linear(*dims.get(name, dims.get(kind)))
        return linears[name]

    taps: Dict[int, List[Tap]] = {}
    for pos, stage, projection_name in recipe["taps"]:
        projection = module(projection_name) if projection_name else None
        taps.setdefault(int(pos), []).append(Tap(int(stage), projection, projection_name))
    return RoutePlan(anchors[recipe["embed_anchor"]], [module(n) for n in recipe["layer_names"]],
                     list(recipe["layer_names"]), taps, anchors[recipe["finish_anchor"]], int(recipe["num_stages"]))


def materialize(module: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Move a module built on the meta device to ``device`` with zero weights (to be loaded from a checkpoint).

    Raises ``ValueError`` if it holds buffers a checkpoint does not carry (non-persistent ones), which would
    stay zero.
    """
    persistent = set(module.state_dict())
    lost = [name for name, _ in module.named_buffers() if name not in persistent]
    if lost:
        raise ValueError(f"{type(module).__name__} has non-persistent buffers {lost[:3]} that no checkpoint holds")
    module.to_empty(device=device)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            tensor.zero_()
    return module
