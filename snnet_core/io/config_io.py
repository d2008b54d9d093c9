"""Reading, overriding and checking the configs of both projects, before any work starts.

- ``load_config_file(path)``: a ``.py`` LazyConfig is loaded as detectron2 loads it (it is Python code, run as
  such); a ``.yaml``/``.yml`` file (a run's or an exported stitch's ``config.yaml``) is data: it is read with a
  ``yaml.SafeLoader`` that also reads what detectron2's ``LazyConfig.save`` writes (``!!python/tuple``, and
  ``!!python/name``/``object``/``object/apply``/``object/new`` tags of classes and functions of the modules a
  config of this project builds from, ``CONFIG_MODULES``), into the same OmegaConf ``DictConfig`` as
  detectron2's ``LazyConfig.load``. Any other tag, and any ``_target_`` string naming a callable outside
  ``CONFIG_MODULES``, is refused before anything is constructed or called: a YAML file never runs a command.
- ``apply_overrides(cfg, overrides, source)``: ``key=value`` overrides; a key the config does not hold is refused
  with the closest existing keys named (``+key=value`` adds a new key on purpose).
- ``check_values(cfg, checks, source)``: every value against its valid range, all problems in one
  ``ConfigError`` (one per line); ``integer``/``number``/... build the checks, ``input_size_problem`` names the
  nearest sizes a patch size allows.
- ``local_checkpoint(path, key)``: a remote checkpoint (``scheme://``) is refused unless detectron2's download
  cache (iopath, ``$FVCORE_CACHE``) holds it: nothing here opens a connection.
- ``check_config_kind(cfg, source, kind)``: the other project's config is named as such.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import tempfile
from collections import abc
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlparse

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = [
    "CONFIG_MODULES", "Check", "ConfigError", "apply_overrides", "check_config_kind", "check_values",
    "config_problems", "input_size_problem", "integer", "load_config_file", "local_checkpoint", "lookup", "number",
    "one_of", "pair",
]

# modules (and single names) whose classes and functions a YAML config may name (``_target_`` strings and
# detectron2's python tags): those the configs of both projects build from. Anything else (os, subprocess,
# builtins, the file-writing helpers of this repository, ...) needs a .py config, which is code and read as code.
CONFIG_MODULES = (
    "detectron2.modeling", "detectron2.layers", "detectron2.structures", "detectron2.solver",
    "detectron2.data.transforms", "detectron2.data.build", "detectron2.data.dataset_mapper",
    "detectron2.data.samplers", "detectron2.evaluation.coco_evaluation", "fvcore.common.param_scheduler",
    "fvcore.transforms", "torch.optim", "functools.partial", "snnet_core.model.anchors.build_anchor",
    "snnet_core.training.data_order.build_resumable_train_loader", "projects.snnet_vitdet.backbone",
    "projects.snnet_vitdet.lr_decay", "projects.snnet_vitdet.export.StitchViTDetBackbone",
    "projects.snnet_setr.model", "projects.snnet_setr.head", "projects.snnet_setr.data.SemSegMapper",
    "projects.snnet_setr.transforms", "projects.snnet_setr.metrics.SemSegMetrics",
    "projects.snnet_setr.export.build_stitch_backbone", "projects.snnet_setr.optim",
    "snnet_core.model.snnet.StitchedViT",
)
# arguments of those callables that read a pickle (detectron2's load_proposals_into_dataset): never from YAML
PICKLE_ARGUMENTS = ("proposal_files",)
MAX_YAML_NODES = 1_000_000  # YAML aliases can describe a config exponentially larger than its file
SCRIPTS = {"depth": "projects/snnet_dpt/train.py", "detection": "projects/snnet_vitdet/train_net.py",
           "segmentation": "projects/snnet_setr/train_net.py", "classification": "projects/snnet_cls/train.py"}
SEGMENTATION_MODELS = "projects.snnet_setr."  # LazyCall models of the segmentation project
_ABSENT = object()


# --------------------------------------------------------------------------------------------------
# loading
def _in_config_modules(qualified: str) -> bool:
    return any(qualified == m or qualified.startswith(m + ".") for m in CONFIG_MODULES)


def config_callable(name: str) -> Any:
    """The class or function ``name`` (``module.attr``) if it is defined in ``CONFIG_MODULES``, else ``ValueError``.

    Only modules of the packages of ``CONFIG_MODULES`` are imported, and the object found must itself be defined in
    ``CONFIG_MODULES`` (a name reaching ``os.system`` through a module's ``import os`` is refused)."""
    from detectron2.utils.registry import locate

    refusal = (f"{name!r} is not among the classes and functions a YAML config may name (detectron2's models, data "
               "transforms and loaders, solvers, torch.optim, this project's backbones; snnet_core.io.config_io."
               "CONFIG_MODULES): a YAML config is data and calls nothing else. Write a .py LazyConfig to build "
               "other objects")
    projects = ("projects.snnet_vitdet.", "projects.snnet_setr.")  # the LazyConfig projects
    packages = {m.split(".")[0] for m in CONFIG_MODULES}
    if not isinstance(name, str) or not any(name.startswith(p + ".") for p in packages) or name.startswith(
            "projects.") and not name.startswith(projects):
        raise ValueError(refusal)
    try:
        obj = locate(name)
    except Exception:
        obj = None
    if obj is None:
        raise ValueError(f"{name!r} names no class or function: check the spelling")
    if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not _in_config_modules(
            f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"):
        raise ValueError(refusal)
    return obj


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus the python tags detectron2's ``LazyConfig.save`` writes, for ``CONFIG_MODULES``."""

    make_python_instance = yaml.constructor.FullConstructor.make_python_instance  # a class, never a function
    set_python_instance_state = yaml.constructor.FullConstructor.set_python_instance_state  # no dunder keys
    get_state_keys_blacklist = yaml.constructor.FullConstructor.get_state_keys_blacklist
    get_state_keys_blacklist_regexp = yaml.constructor.FullConstructor.get_state_keys_blacklist_regexp
    construct_python_tuple = yaml.constructor.FullConstructor.construct_python_tuple
    construct_python_name = yaml.constructor.FullConstructor.construct_python_name
    construct_python_object = yaml.constructor.FullConstructor.construct_python_object
    construct_python_object_apply = yaml.constructor.FullConstructor.construct_python_object_apply
    construct_python_object_new = yaml.constructor.FullConstructor.construct_python_object_new

    def find_python_name(self, name: str, mark: Any, unsafe: bool = False) -> Any:
        try:
            return config_callable(name)
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(None, None, str(exc), mark) from None

    def find_python_module(self, name: str, mark: Any) -> Any:
        raise yaml.constructor.ConstructorError(None, None, f"!!python/module:{name} is refused: a YAML config "
                                                "is data", mark)


_ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", _ConfigLoader.construct_python_tuple)
for _tag, _construct in (("name:", _ConfigLoader.construct_python_name),
                         ("object:", _ConfigLoader.construct_python_object),
                         ("object/apply:", _ConfigLoader.construct_python_object_apply),
                         ("object/new:", _ConfigLoader.construct_python_object_new)):
    _ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/" + _tag, _construct)


def _expanded_size(node: yaml.Node) -> int:
    """Nodes of the tree ``node`` describes, aliases expanded (what OmegaConf would copy), in linear time."""
    sizes: Dict[int, int] = {}
    stack: List[Tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        if id(current) in sizes:
            continue
        children: List[yaml.Node] = []
        if isinstance(current, yaml.SequenceNode):
            children = list(current.value)
        elif isinstance(current, yaml.MappingNode):
            children = [n for pair in current.value for n in pair]
        if children_done:
            sizes[id(current)] = 1 + sum(sizes[id(c)] for c in children)
        else:
            stack.append((current, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(node)]


def _check_targets(value: Any, where: str) -> None:
    """Every ``_target_`` string of a loaded YAML config names a callable of ``CONFIG_MODULES``, and no
    ``PICKLE_ARGUMENTS`` is set."""
    if isinstance(value, abc.Mapping):
        for key in PICKLE_ARGUMENTS:
            if value.get(key):
                raise ValueError(f"{where}.{key}: detectron2 reads these files with pickle (it can run code): a YAML "
                                 "config may not set it; use a .py LazyConfig")
        target = value.get("_target_")
        if isinstance(target, str):
            try:
                config_callable(target)
            except ValueError as exc:
                raise ValueError(f"{where}._target_: {exc}") from None
        for key, item in value.items():
            _check_targets(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_targets(item, f"{where}.{i}")


def _load_yaml(path: str) -> DictConfig:
    with open(path, encoding="utf-8") as f:
        loader = _ConfigLoader(f)
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node) > MAX_YAML_NODES:
                raise ValueError(f"config file {path}: its YAML aliases expand to more than {MAX_YAML_NODES} values; "
                                 "it is not a config this project writes")
            data = loader.construct_document(node) if node is not None else None
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {path} is not a config YAML file this project can read: {exc}") from None
        finally:
            loader.dispose()
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} holds a {type(data).__name__}, not a mapping of config sections")
    _check_targets(data, "")
    return OmegaConf.create(data, flags={"allow_objects": True})


def load_config_file(path: str) -> DictConfig:
    """The config of ``path`` as detectron2's ``LazyConfig.load`` gives it, a YAML file read as data.

    ``.py``: a LazyConfig, Python code (loaded and run by ``LazyConfig.load``). ``.yaml``/``.yml``: read with a
    safe loader (module docstring); a YAML file with a tag or ``_target_`` outside ``CONFIG_MODULES``, a syntax
    error or no top-level mapping is a ``ValueError`` naming the file. A missing file is ``FileNotFoundError``.
    """
    from detectron2.config import LazyConfig

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist: give --config-file a .py LazyConfig (e.g. "
                                "under projects/*/configs/) or the config.yaml of a run or exported stitch")
    ext = os.path.splitext(path)[1]
    if ext == ".py":
        return LazyConfig.load(path)
    if ext in (".yaml", ".yml"):
        return _load_yaml(path)
    raise ValueError(f"config file {path!r}: expected a .py LazyConfig or a .yaml config, not {ext or 'no extension'}")


# --------------------------------------------------------------------------------------------------
# overrides
def _dotted_keys(value: Any, prefix: str = "") -> List[str]:
    keys: List[str] = []
    if isinstance(value, abc.Mapping):
        for k, v in value.items():
            path = f"{prefix}{k}"
            keys.append(path)
            keys += _dotted_keys(v, path + ".")
    return keys


def close_keys(key: str, keys: Sequence[str], n: int = 3) -> List[str]:
    """Up to ``n`` of ``keys`` closest to ``key``: by the whole dotted path, else by the last component (a key
    given in the wrong section)."""
    found = difflib.get_close_matches(key, keys, n=n, cutoff=0.8)
    if not found:
        tails = difflib.get_close_matches(key.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in keys], n=n,
                                          cutoff=0.8)
        found = [k for k in keys if k.rsplit(".", 1)[-1] in tails]
    return found[:n]


def _unknown_key_problem(item: str, key: str, all_keys: Sequence[str]) -> str:
    near = close_keys(key, all_keys)
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    siblings = [k for k in all_keys if k.rsplit(".", 1)[0] == parent] if parent else [k for k in all_keys
                                                                                        if "." not in k]
    hint = (f"did you mean {' or '.join(near)}?" if near else
            f"keys there: {', '.join(siblings[:12])}" if siblings else "")
    return f"override {item!r}: no key {key!r} in the config" + (f"; {hint}" if hint else "")


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], source: str) -> DictConfig:
    """detectron2's ``LazyConfig.apply_overrides`` for keys ``cfg`` holds; returns ``cfg``, changed in place.

    detectron2 adds a key it does not know, so a typo (``train.max_iters=1``) would silently be ignored: every
    such key is refused at once, with the closest existing keys (one ``KeyError``, one override per line);
    ``+KEY=VALUE`` adds a new key on purpose (hydra's syntax). A flag after the overrides, an item without
    ``=`` or a deletion (``~KEY``) is a ``ValueError``. ``source`` (the config file) is named in the messages.
    """
    from detectron2.config import LazyConfig

    flags = [o for o in overrides if o.startswith("-")]
    if flags:
        raise ValueError(f"{flags} come after the key=value overrides: put flags before the overrides (detectron2's "
                         "parser reads everything after the first key=value as an override)")
    all_keys = _dotted_keys(OmegaConf.to_container(cfg, resolve=False))
    problems = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or not key.strip("+"):
            problems.append(f"override {item!r} is not KEY=VALUE (e.g. train.output_dir=output/x)")
        elif key.startswith("~"):
            problems.append(f"override {item!r}: deleting a key is not supported; set it to null instead")
        elif not key.startswith("+") and OmegaConf.select(cfg, key, default=_ABSENT,
                                                          throw_on_resolution_failure=False) is _ABSENT:
            problems.append(_unknown_key_problem(item, key, all_keys))
    if problems:
        raise KeyError(f"{source}: " + "\n".join(problems) + "\n(a key the config does not hold is refused; "
                       "+KEY=VALUE adds one on purpose)")
    try:
        return LazyConfig.apply_overrides(cfg, list(overrides))
    except (KeyError, ValueError):
        raise
    except Exception as exc:  # hydra's override grammar errors
        raise ValueError(f"{source}: overrides {list(overrides)} cannot be parsed: {exc}") from None


# --------------------------------------------------------------------------------------------------
# value checks
@dataclasses.dataclass(frozen=True)
class Check:
    """A valid range: ``valid(value)`` is true for a valid value; ``expected`` says what is valid."""

    valid: Callable[[Any], bool]
    expected: str


class ConfigError(ValueError):
    """Every invalid value of a config, one per line (``problems``)."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(f"{source}: {len(self.problems)} invalid setting{'s' if len(self.problems) > 1 else ''}, "
                         f"fix {'them' if len(self.problems) > 1 else 'it'} (in the file or as KEY=VALUE overrides):\n" + "\n".join(self.problems))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: Optional[int] = None, maximum: Optional[int] = None, note: str = "") -> Check:
    """An integer in ``[minimum, maximum]`` (either end open when ``None``)."""
    bounds = " and ".join(s for s in (f">= {minimum}" if minimum is not None else "",
                                      f"<= {maximum}" if maximum is not None else "") if s)
    return Check(lambda v: _is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum),
                 f"an integer{' ' + bounds if bounds else ''}{f' ({note})' if note else ''}")


def number(low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
           high_open: bool = False, note: str = "") -> Check:
    """A finite number in the interval from ``low`` to ``high`` (open ends where asked, unbounded at ``None``)."""
    def valid(v: Any) -> bool:
        return _is_real(v) and (low is None or (v > low if low_open else v >= low)) and (
            high is None or (v < high if high_open else v <= high))
    bounds = " and ".join(s for s in (f"{'>' if low_open else '>='} {low}" if low is not None else "",
                                      f"{'<' if high_open else '<='} {high}" if high is not None else "") if s)
    return Check(valid, f"a finite number{' ' + bounds if bounds else ''}{f' ({note})' if note else ''}")


def one_of(*values: Any) -> Check:
    return Check(lambda v: any(v == x and type(v) is type(x) for x in values),
                 "one of " + ", ".join(map(repr, values)))


def subset_of(*values: Any, required: Sequence[Any] = (), note: str = "") -> Check:
    """A non-empty list of distinct entries of ``values`` that holds every entry of ``required``."""
    def valid(v: Any) -> bool:
        items = list(v) if isinstance(v, (list, tuple, ListConfig)) else None
        return (bool(items) and len(set(map(repr, items))) == len(items)
                and all(any(x == y and type(x) is type(y) for y in values) for x in items)
                and all(r in items for r in required))
    holding = f", holding {', '.join(map(repr, required))}" if required else ""
    return Check(valid, f"a list of distinct values from {', '.join(map(repr, values))}{holding}"
                        f"{f' ({note})' if note else ''}")


def pair(item: Check, ordered: bool = False, note: str = "") -> Check:
    """Two values, each valid for ``item`` (``ordered``: the first <= the second)."""
    def valid(v: Any) -> bool:
        return (isinstance(v, (list, tuple, ListConfig)) and len(v) == 2 and all(item.valid(x) for x in v)
                and (not ordered or v[0] <= v[1]))
    return Check(valid, f"two values, each {item.expected}{', the first <= the second' if ordered else ''}"
                        f"{f' ({note})' if note else ''}")


def lookup(cfg: Any, key: str, default: Any = _ABSENT) -> Any:
    """``cfg``'s value at the dotted ``key`` (mappings and, by index, sequences); ``default`` where absent."""
    value = cfg
    for part in key.split("."):
        if isinstance(value, abc.Mapping) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple, ListConfig)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return default
    return value


def config_problems(cfg: Any, checks: Mapping[str, Check], optional: Iterable[str] = ()) -> List[str]:
    """One line per key of ``checks`` whose value is invalid; a key of ``optional`` may be absent."""
    optional, problems = set(optional), []
    for key, check in checks.items():
        value = lookup(cfg, key)
        if value is _ABSENT:
            if key not in optional:
                problems.append(f"{key} is missing: expected {check.expected}")
            continue
        try:
            ok = check.valid(value)
        except Exception:  # a comparison of a value of the wrong type
            ok = False
        if not ok:
            plain = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
            problems.append(f"{key}={plain!r} is not valid: expected {check.expected}")
    return problems


def check_values(cfg: Any, checks: Mapping[str, Check], source: str, optional: Iterable[str] = (),
                 more: Sequence[Optional[str]] = ()) -> None:
    """``ConfigError`` listing every problem of ``config_problems`` and the non-empty lines of ``more``."""
    problems = config_problems(cfg, checks, optional) + [p for p in more if p]
    if problems:
        raise ConfigError(source, problems)


def input_size_problem(key: str, size: Any, patch_size: int) -> Optional[str]:
    """The problem of an input size ``(H, W)`` (``key``) that is not two positive multiples of ``patch_size``,
    naming the nearest valid sizes; ``None`` for a valid size."""
    if not (isinstance(size, (list, tuple, ListConfig)) and len(size) == 2 and all(_is_int(s) for s in size)):
        return f"{key}={size!r} is not valid: expected two integers [H, W], multiples of the patch size {patch_size}"
    if all(s > 0 and s % patch_size == 0 for s in size):
        return None
    down = [max(patch_size, s // patch_size * patch_size) for s in size]
    up = [max(patch_size, -(-s // patch_size) * patch_size) for s in size]
    nearest = " or ".join(dict.fromkeys(str(v) for v in (down, up)))
    return (f"{key}={list(size)!r} is not valid: both sides must be positive multiples of the patch size {patch_size}; "
            f"nearest valid: {nearest}")


# --------------------------------------------------------------------------------------------------
# checkpoints
class RemoteCheckpointError(FileNotFoundError):
    """A checkpoint given as a URL that is not in the local download cache."""


def _download_cache_file(url: str) -> Optional[str]:
    """Where detectron2's ``PathManager`` (iopath ``HTTPURLHandler``) caches ``url``'s file, if it does."""
    if url.startswith("detectron2://"):  # detectron2's Detectron2Handler
        url = "https://dl.fbaipublicfiles.com/detectron2/" + url[len("detectron2://"):]
    if not url.startswith(("http://", "https://", "ftp://")):
        return None
    cache = os.path.expanduser(os.getenv("FVCORE_CACHE", "~/.torch/iopath_cache"))
    if os.path.isdir(cache) and not os.access(cache, os.W_OK):  # iopath then falls back to the temporary folder
        cache = os.path.join(tempfile.gettempdir(), "iopath_cache")
    filename = url.split("/")[-1]
    if len(filename) > 250:  # iopath renames such files with a random suffix: never found again
        return None
    return os.path.join(cache, os.path.dirname(urlparse(url).path.lstrip("/")), filename)


def local_checkpoint(path: str, key: str) -> str:
    """The local file of a checkpoint ``path`` (config key or flag ``key``): ``path`` itself, or for a URL the file
    detectron2's download cache already holds. An uncached URL (any ``scheme://``) is a ``RemoteCheckpointError``
    saying to download it: this project never opens a connection."""
    if "://" not in str(path):
        return path
    cached = _download_cache_file(path)
    if cached is not None and os.path.isfile(cached):
        return cached
    name = str(path).rstrip("/").split("/")[-1] or "checkpoint.pth"
    raise RemoteCheckpointError(f"{key}={path!r} is a remote file and this project never downloads: download it "
                                f"(e.g. wget -O checkpoints/{name} '{path}') and pass the local path, "
                                f"{key}=checkpoints/{name}")


# --------------------------------------------------------------------------------------------------
# which project
def config_kind(cfg: Any) -> Optional[str]:
    """``"segmentation"`` (a LazyCall model of ``projects.snnet_setr``), ``"detection"`` (another LazyCall model),
    ``"classification"`` (a plain model with ``num_classes``), ``"depth"`` (a DPT recipe: plain model, lr_schedule)
    or ``None``."""
    model = cfg.get("model") if isinstance(cfg, abc.Mapping) else None
    if isinstance(model, abc.Mapping) and "_target_" in model:
        target = model["_target_"]
        name = target if isinstance(target, str) else f"{getattr(target, '__module__', '')}."
        return "segmentation" if name.startswith(SEGMENTATION_MODELS) else "detection"
    if isinstance(model, abc.Mapping) and "anchors" in model and "num_classes" in model:
        return "classification"
    if isinstance(model, abc.Mapping) and "anchors" in model and "lr_schedule" in cfg:
        return "depth"
    return None


def check_config_kind(cfg: Any, source: str, kind: str, sections: Sequence[str]) -> None:
    """``ValueError`` for a config of the other project (naming its script) or one without ``sections``."""
    found = config_kind(cfg)
    if found is not None and found != kind:
        raise ValueError(f"{source} is a {found} config, not a {kind} one: use {SCRIPTS[found]} --config-file "
                         f"{source}")
    missing = [s for s in sections if s not in cfg]
    if missing:
        raise ValueError(f"{source} has no section {', '.join(missing)} (it has {', '.join(map(str, cfg.keys()))}): "
                         f"give {SCRIPTS[kind]} a {kind} config (see {os.path.dirname(SCRIPTS[kind])}/configs/)")
