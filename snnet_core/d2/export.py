"""What every detectron2 project's ``--export-stitch`` shares: the stitch check, the anchors' build arguments an
exported config rebuilds them from, and the two files of ``OUTPUT_DIR/stitch_<ID>/``: ``model_final.pth``
(``{"model": state_dict, "stitch": {...}}``) and its LazyConfig ``config.yaml``, both written atomically."""
from __future__ import annotations

import copy
import os
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Sequence

import torch
import torch.nn as nn
from detectron2.config import LazyConfig, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from snnet_core.io.atomic_io import write_atomic
from snnet_core.io.config_io import load_config_file
from snnet_core.model.anchors import anchor_build
from snnet_core.model.export import export_stitch
from snnet_core.model.snnet import StitchedViT

WEIGHTS_NAME = "model_final.pth"
CONFIG_NAME = "config.yaml"


def plain(value: Any) -> Any:
    """Python containers of an OmegaConf ``DictConfig`` / ``ListConfig`` (what ``instantiate`` passes a LazyCall's
    arguments as); other values as they are."""
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def check_stitch(snnet: StitchedViT, stitch_id: int, source: str) -> None:
    """``KeyError`` naming ``source`` (the checkpoint) and the ids it holds for a stitch it does not hold."""
    try:
        snnet.space[stitch_id]
    except KeyError as exc:
        raise KeyError(f"cannot export stitch {stitch_id!r}: the SN-Net of {source} does not hold it "
                       f"({exc.args[0]})") from None


def anchor_builds(snnet: StitchedViT) -> List[Dict[str, Any]]:
    """The ``build_anchor`` arguments of the SN-Net's anchors (drop path off: an exported stitch is for inference);
    ``ValueError`` where an anchor was not built by ``build_anchor`` with JSON-safe arguments."""
    builds = [anchor_build(a) for a in snnet.anchors]
    if any(b is None for b in builds):
        raise ValueError("the SN-Net's anchors were not built by snnet_core.build_anchor with JSON-safe arguments "
                         "(the anchors of the config's model): the exported config could not rebuild them")
    return [dict(b, drop_path_rate=0.0) for b in builds]


def exported_lazy_config(cfg: DictConfig, model: DictConfig, weights: str) -> DictConfig:
    """The LazyConfig of an exported stitch: ``model`` (the standalone model's LazyCall) with the ``dataloader``,
    ``datasets`` and ``train`` sections of ``cfg`` (the SN-Net's; its training sections are dropped),
    ``train.init_checkpoint=weights`` and ``train.output_dir`` its folder."""
    out = DictConfig({})
    out.model = model
    for section in ("dataloader", "datasets", "train"):
        if section in cfg:
            out[section] = copy.deepcopy(cfg[section])
    if "train" in out:
        out.train.init_checkpoint = weights
        out.train.output_dir = os.path.dirname(weights)
    return out


def save_lazy_config(cfg: DictConfig, path: str) -> None:
    """``LazyConfig.save`` to ``path`` atomically, refusing a config that does not load back from YAML."""
    with tempfile.TemporaryDirectory() as tmp:
        draft = os.path.join(tmp, CONFIG_NAME)
        LazyConfig.save(cfg, draft)
        if os.path.exists(draft + ".pkl") or not os.path.isfile(draft):
            raise ValueError(f"the config of {path} cannot be written as YAML (a value is not serialisable; see the "
                             "log of LazyConfig.save)")
        load_config_file(draft)  # as train_net.py and demo.py read it: a YAML file is data
        with open(draft) as f:
            text = f.read()
    write_atomic(path, lambda f: f.write(text))


def write_export(folder: str, state: Mapping[str, torch.Tensor], snnet: StitchedViT, stitch_id: int, source: str,
                 cfg: DictConfig) -> Dict[str, str]:
    """``folder/model_final.pth`` (``state`` on the CPU and the stitch's id, route, kind and source) and
    ``folder/config.yaml`` (``cfg``); returns ``{"config", "weights"}``."""
    weights, config_path = os.path.join(folder, WEIGHTS_NAME), os.path.join(folder, CONFIG_NAME)
    stitch = snnet.space[stitch_id]
    payload = {"model": {k: v.detach().cpu() for k, v in state.items()},
               "stitch": {"id": stitch.id, "route": stitch.route, "kind": stitch.kind, "source": str(source)}}
    save_lazy_config(cfg, config_path)  # first: a config that would not load back is refused before any weights
    write_atomic(weights, lambda f: torch.save(payload, f), binary=True)
    return {"config": config_path, "weights": weights}


def export_stitched_model(model: nn.Module, snnet: StitchedViT, stitch_id: int, output_dir: str, source: str,
                          config_for: Callable[[str], DictConfig], dropped: Sequence[str],
                          stitch_prefix: str) -> Dict[str, str]:
    """Write the standalone model of stitch ``stitch_id`` of ``snnet`` (the SN-Net inside ``model``, trained weights
    loaded from ``source``) to ``output_dir/stitch_<ID>/``; returns ``{"config", "weights"}``.

    Its weights: ``model``'s but those under the prefixes ``dropped`` (the SN-Net's and any the exported model
    lacks), and the exported stitch's (LoRA merged) under ``stitch_prefix``; its LazyConfig: ``config_for(weights
    path)``. The model is built from that config and loaded with those weights (strictly) before anything is
    written, so a file that would not load is never left as a finished export.
    """
    check_stitch(snnet, stitch_id, source)
    folder = os.path.join(output_dir, f"stitch_{stitch_id}")
    new_cfg = config_for(os.path.join(folder, WEIGHTS_NAME))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(tuple(dropped))}
    route = export_stitch(snnet, stitch_id).eval()
    state.update({f"{stitch_prefix}{k}": v for k, v in route.state_dict().items()})
    instantiate(new_cfg.model).load_state_dict(state)  # strict: the config and the weights agree
    return write_export(folder, state, snnet, stitch_id, source, new_cfg)

