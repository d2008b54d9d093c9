"""snnet_core.io.config_io and both projects' config loading: a YAML config never runs code (crafted python tags,
``_target_``s outside the config modules, alias bombs), detectron2's own dumps load the same, an unknown override
key is refused with the closest keys, invalid values are all listed at once, remote checkpoints never reach the
network, the other project's config is named as such."""
import argparse
import os
import socket

import cv2
import numpy as np
import pytest
import yaml
from detectron2.config import LazyConfig
from omegaconf import OmegaConf

from projects.snnet_dpt import train as dpt_train
from projects.snnet_vitdet import train_net
from snnet_core.io import config_io
from snnet_core.io.config_io import (
    ConfigError, RemoteCheckpointError, apply_overrides, check_values, input_size_problem, integer,
    load_config_file, local_checkpoint, number, subset_of,
)

REPO = os.path.join(os.path.dirname(__file__), "..")
VITDET_TINY = os.path.join(REPO, "projects", "snnet_vitdet", "configs", "synthetic", "mask_rcnn_snnetv2_tiny.py")
VITDET_S = os.path.join(REPO, "projects", "snnet_vitdet", "configs", "COCO", "mask_rcnn_vitdet_deit3_s_100ep.py")
DPT_TINY = os.path.join(REPO, "projects", "snnet_dpt", "configs", "synthetic", "dpt_snnetv2_tiny.py")


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a connection was attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def dumped(cfg):
    """A comparable text of a config (functools.partial objects compare by identity)."""
    return yaml.dump(OmegaConf.to_container(cfg))


def write_image(path):
    cv2.imwrite(str(path), np.zeros((32, 32, 3), np.uint8))


def vitdet_args(*opts, eval_only=False, config=VITDET_TINY):
    return argparse.Namespace(config_file=config, opts=list(opts), eval_only=eval_only)


# --- a YAML config is data ---------------------------------------------------------------------------------
MALICIOUS = {
    "apply": "train: !!python/object/apply:os.system ['touch {marker}']\n",
    "apply_subprocess": "train: !!python/object/apply:subprocess.check_call [['touch', '{marker}']]\n",
    "new": "train: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
    "object": "train: !!python/object:subprocess.Popen {{args: ['touch', '{marker}']}}\n",
    "name": "train: {{x: !!python/name:os.system }}\n",
    "module": "train: !!python/module:os\n",
    "through_import": "train: !!python/object/apply:snnet_core.model.anchors.os.system ['touch {marker}']\n",
    "partial_of_system": ("train: {{f: !!python/object/apply:functools.partial [!!python/name:os.system , "
                          "'touch {marker}']}}\n"),
    "target": "model: {{_target_: os.system, command: 'touch {marker}'}}\n",
    "target_writer": "model: {{_target_: snnet_core.io.run_dir.clear_run, paths: ['{marker}']}}\n",
    "proposals": ("dataloader: {{test: {{dataset: {{_target_: detectron2.data.get_detection_dataset_dicts, "
                  "names: x, proposal_files: ['{marker}.pkl']}}}}}}\n"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_a_crafted_yaml_config_is_refused_and_runs_nothing(case, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "config.yaml"
    path.write_text(MALICIOUS[case].format(marker=marker))
    with pytest.raises(ValueError, match="config"):
        load_config_file(str(path))
    assert not marker.exists()


def test_every_yaml_reader_refuses_a_crafted_config(tmp_path):
    """Both training scripts and the detection demo read --config-file through the safe loader."""
    from projects.snnet_vitdet import demo

    marker = tmp_path / "ran"
    path = tmp_path / "config.yaml"
    path.write_text(MALICIOUS["apply"].format(marker=marker))
    write_image(tmp_path / "photo.png")
    with pytest.raises(ValueError, match="not among the classes and functions a YAML config may name"):
        dpt_train.load_config(str(path), [])
    with pytest.raises(ValueError, match="not among the classes and functions"):
        train_net.load_config(vitdet_args(config=str(path)))
    with pytest.raises(ValueError, match="not among the classes and functions"):
        demo.run(str(path), [str(tmp_path)], str(tmp_path / "out"))
    assert not marker.exists()


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="aliases expand to more than"):
        load_config_file(str(path))


@pytest.mark.parametrize("config", [VITDET_TINY, VITDET_S])
def test_what_detectron2_saves_loads_safely_and_the_same(config, tmp_path):
    """A detection run's config.yaml (detectron2's default_setup -> LazyConfig.save: python tags for tuples,
    ShapeSpec and functools.partial) loads as detectron2's unsafe loader loads it."""
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(LazyConfig.load(config), path)
    assert "!!python/object/apply:functools.partial" in open(path).read()
    safe = load_config_file(path)
    assert dumped(safe) == dumped(LazyConfig.load(path))
    assert safe.optimizer.params.lr_factor_func("backbone.net.blocks.1.attn") > 0


def test_an_exported_stitch_config_loads_safely_and_the_same(tmp_path):
    from detectron2.config import instantiate

    from projects.snnet_vitdet.export import exported_config
    from snnet_core.d2.export import save_lazy_config

    cfg = LazyConfig.load(VITDET_TINY)
    model = instantiate(cfg.model)
    path = str(tmp_path / "stitch_3" / "config.yaml")
    save_lazy_config(exported_config(cfg, model.backbone.net, 3, str(tmp_path / "stitch_3" / "model_final.pth")), path)
    assert dumped(load_config_file(path)) == dumped(LazyConfig.load(path))
    assert instantiate(load_config_file(path).model).backbone.net.stitch_id == 3


def test_a_depth_run_config_loads_back(tmp_path):
    cfg = dpt_train.load_config(DPT_TINY, [])
    dpt_train.save_config(cfg, str(tmp_path))
    assert dpt_train.load_config(str(tmp_path / "config.yaml"), []) == cfg


def test_bad_config_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.py"):
        load_config_file(str(tmp_path / "nothing.py"))
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ValueError, match="expected a .py LazyConfig or a .yaml config"):
        load_config_file(str(tmp_path / "c.json"))
    (tmp_path / "broken.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="broken.yaml is not a config YAML file"):
        load_config_file(str(tmp_path / "broken.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="holds a list, not a mapping"):
        load_config_file(str(tmp_path / "list.yaml"))


# --- overrides ---------------------------------------------------------------------------------------------
def test_an_unknown_override_key_is_refused_with_the_closest_keys():
    cfg = LazyConfig.load(VITDET_TINY)
    with pytest.raises(KeyError, match=r"no key 'train.max_iters' in the config; did you mean train.max_iter\?"):
        apply_overrides(cfg, ["train.max_iters=1", "train.log_period=1"], VITDET_TINY)
    with pytest.raises(KeyError) as info:  # every unknown key at once
        apply_overrides(cfg, ["snnet.ls_init_image=1", "train.max_iters=1"], VITDET_TINY)
    assert "snnet.ls_init_images" in str(info.value) and "train.max_iter?" in str(info.value)
    assert cfg.train.max_iter == 500 and "max_iters" not in cfg.train
    apply_overrides(cfg, ["+train.note=x", "train.max_iter=7"], VITDET_TINY)  # '+' adds a key on purpose
    assert cfg.train.note == "x" and cfg.train.max_iter == 7


def test_both_training_scripts_refuse_a_typo_in_an_override():
    with pytest.raises(KeyError, match="did you mean train.max_iter"):
        train_net.load_config(vitdet_args("train.max_iters=1"))
    with pytest.raises(KeyError, match="did you mean train.epochs"):
        dpt_train.load_config(DPT_TINY, ["train.epoch=1"])


def test_override_syntax_errors_are_named():
    cfg = LazyConfig.load(VITDET_TINY)
    with pytest.raises(ValueError, match=r"\['--eval-only'\] come after the key=value overrides: put flags before"):
        apply_overrides(cfg, ["train.max_iter=1", "--eval-only"], VITDET_TINY)
    with pytest.raises(KeyError, match="is not KEY=VALUE"):
        apply_overrides(cfg, ["train.max_iter"], VITDET_TINY)
    with pytest.raises(KeyError, match="deleting a key is not supported"):
        apply_overrides(cfg, ["~train.max_iter=1"], VITDET_TINY)


# --- values ------------------------------------------------------------------------------------------------
def test_every_invalid_value_is_listed_at_once():
    cfg = {"a": {"n": -5, "lr": float("nan"), "ok": 3}}
    with pytest.raises(ConfigError) as info:
        check_values(cfg, {"a.n": integer(0), "a.lr": number(0, low_open=True), "a.ok": integer(1),
                           "a.gone": integer(1)}, "cfg.py", optional=["a.gone"])
    assert info.value.problems == ["a.n=-5 is not valid: expected an integer >= 0",
                                   "a.lr=nan is not valid: expected a finite number > 0"]
    assert isinstance(info.value, ValueError) and "cfg.py: 2 invalid settings" in str(info.value)


def test_a_subset_check_takes_distinct_known_values_holding_the_required_ones():
    check = subset_of("anchor", "FS", "SF", required=("anchor",))
    assert [check.valid(v) for v in (["anchor", "FS"], ("FS", "anchor"), OmegaConf.create(["anchor"]))] == [True] * 3
    assert not any(check.valid(v) for v in (["FS"], ["anchor", "XY"], ["anchor", "anchor"], [], None, "anchor"))
    assert check.expected == "a list of distinct values from 'anchor', 'FS', 'SF', holding 'anchor'"


def test_an_input_size_off_the_patch_grid_names_the_nearest_sizes():
    assert input_size_problem("k", [100, 128], 16) == ("k=[100, 128] is not valid: both sides must be positive "
                                                       "multiples of the patch size 16; nearest valid: [96, 128] or "
                                                       "[112, 128]")
    assert input_size_problem("k", (96, 128), 16) is None


def test_detection_checks_its_values_before_any_work():
    with pytest.raises(ConfigError) as info:
        train_net.load_config(vitdet_args("snnet.ls_init_images=-5", "train.max_iter=0",
                                          "snnet.flops_input_size=[100,100]", "optimizer.lr=0"))
    problems = info.value.problems
    assert any(p.startswith("snnet.ls_init_images=-5 is not valid: expected an integer >= 0") for p in problems)
    assert any(p.startswith("train.max_iter=0 is not valid: expected an integer >= 1") for p in problems)
    assert any(p.startswith("optimizer.lr=0 is not valid") for p in problems)
    assert any("snnet.flops_input_size=[100, 100]" in p and "[96, 96] or [112, 112]" in p for p in problems)
    assert len(problems) == 4
    train_net.load_config(vitdet_args("snnet.ls_init_images=-5", eval_only=True))  # not read by --eval-only


def test_depth_checks_its_values_before_any_work():
    cfg = dpt_train.load_config(DPT_TINY, ["train.ls_init_images=-5", "model.max_depth=0",
                                           "dataloader.eval_size=[100,160]", "dataloader.augmentation.flip_prob=2"])
    with pytest.raises(ConfigError) as info:
        dpt_train.check_settings(cfg, training=True, source=DPT_TINY)
    text = "\n".join(info.value.problems)
    assert "train.ls_init_images=-5 is not valid" in text and "model.max_depth=0 is not valid" in text
    assert "dataloader.eval_size=[100, 160] is not valid" in text and "[96, 160] or [112, 160]" in text
    assert "dataloader.augmentation.flip_prob=2 is not valid" in text and len(info.value.problems) == 4


# --- remote checkpoints ------------------------------------------------------------------------------------
def test_a_remote_checkpoint_is_refused_without_a_connection(no_network, tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    url = "https://dl.fbaipublicfiles.com/deit/deit_3_small_224_21k.pth"
    with pytest.raises(RemoteCheckpointError, match="is a remote file and this project never downloads: download"):
        local_checkpoint(url, "train.init_checkpoint")
    with pytest.raises(ConfigError, match="train.init_checkpoint='https://"):
        train_net.load_config(vitdet_args(f"train.init_checkpoint={url}"))
    with pytest.raises(ConfigError, match=r"model.backbone.net.slow.pretrained='s3://"):
        train_net.load_config(vitdet_args("model.backbone.net.slow.pretrained=s3://bucket/deit.pth"))
    cfg = dpt_train.load_config(DPT_TINY, [f"model.pretrained=[null,{url}]"])
    with pytest.raises(ConfigError, match=r"model.pretrained.1='https://"):
        dpt_train.check_settings(cfg, training=True)
    from projects.snnet_dpt import demo

    write_image(tmp_path / "photo.png")
    with pytest.raises(RemoteCheckpointError, match="--weights='https://"):
        demo.run(url, [str(tmp_path)], str(tmp_path / "out"))


def test_a_cached_download_is_used_without_a_connection(no_network, tmp_path, monkeypatch):
    """The file detectron2's PathManager (iopath) cached for the URL is used, as detectron2 would."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    cached = tmp_path / "deit" / "deit_3_small_224_21k.pth"
    cached.parent.mkdir()
    cached.write_bytes(b"x")
    url = "https://dl.fbaipublicfiles.com/deit/deit_3_small_224_21k.pth"
    assert local_checkpoint(url, "k") == str(cached)
    cfg = train_net.load_config(vitdet_args(f"train.init_checkpoint={url}"))
    assert cfg.train.init_checkpoint == str(cached)
    assert local_checkpoint("checkpoints/local.pth", "k") == "checkpoints/local.pth"


# --- the other project's config ----------------------------------------------------------------------------
def test_the_other_projects_config_is_named():
    with pytest.raises(ValueError, match="is a depth config, not a detection one: use projects/snnet_dpt/train.py"):
        train_net.load_config(vitdet_args(config=DPT_TINY))
    with pytest.raises(ValueError, match="is a detection config, not a depth one: use projects/snnet_vitdet/"
                                         "train_net.py"):
        dpt_train.load_config(VITDET_TINY, [])
    setr_tiny = os.path.join(REPO, "projects", "snnet_setr", "configs", "synthetic", "setr_snnetv2_tiny.py")
    with pytest.raises(ValueError, match="is a segmentation config, not a detection one: use "
                                         "projects/snnet_setr/train_net.py"):
        train_net.load_config(vitdet_args(config=setr_tiny))


def test_config_modules_do_not_reach_other_code():
    assert config_io.config_callable("functools.partial") is not None
    for name in ("os.system", "builtins.eval", "snnet_core.model.anchors.os.system", "detectron2.config.LazyConfig.load",
                 "snnet_core.io.atomic_io.write_atomic", "torch.load"):
        with pytest.raises(ValueError):
            config_io.config_callable(name)
