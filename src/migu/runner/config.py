"""Run configuration: YAML files with ``key=value`` overrides, validated before any work starts."""

from __future__ import annotations

import copy
import os
import re
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from .optim import OPTIMIZER_IMPLS


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML safely (no object construction), numbers like 1e-4 included."""
    return yaml.load(text, Loader=_Loader)  # _Loader derives from SafeLoader


class ConfigError(ValueError):
    """A bad config file, field or override; the message names it."""


@dataclass
class DataConfig:
    """Which rows each task uses (seeded sample limits; None = all)."""

    train_n: int | None = None
    test_n: int | None = None
    keep_unlabeled: bool = False  # MNLI '-' rows: dropped (default) or kept as the authors do
    eval_split: str = "test"
    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)  # {task: {train_n:, test_n:}}

    def __post_init__(self) -> None:
        for key in ("train_n", "test_n"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ConfigError(f"data.{key} must be a positive integer or null, got {v!r}")
        if self.eval_split not in ("test", "dev"):
            raise ConfigError(f"data.eval_split must be 'test' or 'dev', got {self.eval_split!r}")
        for task, opts in self.per_task.items():
            bad = set(opts) - {"train_n", "test_n"}
            if bad:
                raise ConfigError(f"data.per_task.{task} has unknown keys {sorted(bad)}")


@dataclass
class TrainConfig:
    """The optimisation recipe, applied to each task in turn (a fresh optimizer per task)."""

    epochs: float = 1.0
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"  # constant | linear | cosine
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    # AdamW kernel: auto (fused where torch has one) | fused | foreach | for-loop; see runner/optim.py
    optimizer_impl: str = "auto"
    mixed_precision: str = "no"  # no | bf16
    eval_batch_size: int = 64
    log_every: int = 10
    max_steps_per_task: int | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "lr": self.lr,
            "eval_batch_size": self.eval_batch_size,
            "log_every": self.log_every,
        }
        for key, v in positive.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise ConfigError(f"train.{key} must be a positive number, got {v!r}")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ConfigError(f"train.schedule must be constant, linear or cosine, got {self.schedule!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.optimizer_impl not in OPTIMIZER_IMPLS:
            raise ConfigError(
                f"train.optimizer_impl must be one of {', '.join(OPTIMIZER_IMPLS)}, "
                f"got {self.optimizer_impl!r}"
            )
        if self.mixed_precision not in ("no", "bf16"):
            raise ConfigError(f"train.mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must be two numbers, got {self.betas!r}")
        if self.max_steps_per_task is not None and self.max_steps_per_task <= 0:
            raise ConfigError(
                f"train.max_steps_per_task must be positive or null, got {self.max_steps_per_task}"
            )


@dataclass
class MethodConfig:
    name: str = "ft"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """One continual-learning run: an order of tasks, one model, one method, MIGU on or off."""

    name: str = "run"
    seed: int = 42
    order: str | None = None
    tasks: list[str] | None = None
    data_root: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=dict)  # migu.models.ModelConfig fields
    method: MethodConfig = field(default_factory=MethodConfig)
    migu: dict[str, Any] | None = None  # MIGUConfig fields; None = MIGU off; {} = method's threshold
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_baseline: bool = True  # evaluate the untrained model (for FWT)
    keep_checkpoints: bool = False  # keep every task's checkpoint (analysis) instead of the last
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if (self.order is None) == (self.tasks is None):
            raise ConfigError("config must give exactly one of 'order' (a registry name) or 'tasks' (a list)")
        if self.tasks is not None and (not self.tasks or not all(isinstance(t, str) for t in self.tasks)):
            raise ConfigError(f"tasks must be a non-empty list of task names, got {self.tasks!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if self.migu is not None and not isinstance(self.migu, dict):
            raise ConfigError(f"migu must be a mapping of MIGUConfig fields or null, got {self.migu!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["train"]["betas"] = list(self.train.betas)
        return out


def _build(cls: type, data: Any, where: str) -> Any:
    """Dataclass from a mapping, recursing into dataclass fields; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or 'config'}; known: {sorted(known)}")
    subs = {"data": DataConfig, "train": TrainConfig, "method": MethodConfig} if cls is RunConfig else {}
    kwargs = {
        k: _build(subs[k], v, f"{where}{k}.") if k in subs and v is not None else v for k, v in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def build_run_config(data: dict[str, Any]) -> RunConfig:
    """A validated RunConfig from a plain mapping (unknown keys and bad values are ConfigErrors)."""
    return _build(RunConfig, data, "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (['a','b','c'], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested mapping (creating mappings on the way)."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a mapping")
            node = node[part]
        node[path[-1]] = value
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml_config(path: str | os.PathLike[str], _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping; a ``base: other.yaml`` key (relative to the file) is merged under it."""
    p = Path(path).resolve()
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    if p in _seen:
        raise ConfigError(f"{p}: 'base' includes form a cycle")
    try:
        loaded = yaml_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"{p}: 'base' must be a file path")
    return _deep_merge(read_yaml_config(p.parent / base, (*_seen, p)), loaded)


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (or start from defaults), apply overrides, validate."""
    data = read_yaml_config(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    try:
        return build_run_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None


def config_to_yaml(config: Any) -> str:
    """The resolved config as YAML (saved with results)."""
    data = (
        config.to_dict() if hasattr(config, "to_dict") else asdict(config) if is_dataclass(config) else config
    )
    return yaml.safe_dump(data, sort_keys=False)
