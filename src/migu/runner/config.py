"""Run configuration: YAML files with ``key=value`` overrides, validated before any work starts.

Every section is a dataclass (``RunConfig`` with ``DataConfig``, ``TrainConfig``, ``MethodConfig``,
the models' ``ModelConfig`` and the engine's ``MIGUConfig``), and :func:`build_run_config` checks
every field against its type annotation (``migu.validation.build_dataclass``) before the
dataclass's own range checks run, so a bad value fails when the config is read, naming its dotted
key (``train.weight_decay must be a number, got 'abc'``), before any model loads or any file is
written.

Why not OmegaConf structured configs: they reject the union types these configs use
(``targets: str | list[str]``, ``random_init: dict | None`` beside strings) and ``Literal`` choices,
and would still need the range checks below; this module stays the smaller of the two. It keeps
the YAML files and the ``key=value`` override syntax, ``base:`` includes, and reads ``1e-4`` as a
float (YAML 1.1 would read a string).
"""

from __future__ import annotations

import copy
import math
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from ..engine import MIGUConfig
from ..methods import get_method, get_method_class
from ..models import ModelConfig
from ..validation import (
    ConfigError,
    build_dataclass,
    check_choice,
    check_int,
    check_list,
    check_literals,
    check_number,
    config_errors,
    invalid,
)
from .optim import OptimizerImpl


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


Schedule = Literal["constant", "linear", "cosine"]  # lr schedule per task (see runner/loop.py)


@dataclass
class DataConfig:
    """Which rows each task uses (seeded sample limits; None = all)."""

    train_n: int | None = None
    test_n: int | None = None
    # validation rows for model selection (dev.json if it is not a copy of test.json, else carved
    # from train, seeded and disjoint); None = no validation split
    val_n: int | None = None
    # what is scored after each task: test rows (the reported numbers), validation rows (model
    # selection), or both; a tuning grid scores on val only, so the test rows are never seen
    eval_on: list[Literal["test", "val"]] = field(default_factory=lambda: ["test"])
    keep_unlabeled: bool = False  # MNLI '-' rows: dropped (default) or kept as the authors do
    eval_split: str = "test"
    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)  # {task: {train_n:, test_n:, val_n:}}

    @config_errors()
    def __post_init__(self) -> None:
        if not self.eval_on or len(set(self.eval_on)) != len(self.eval_on):
            raise invalid("data.eval_on", "a list of test and/or val, each once", self.eval_on)
        if "val" in self.eval_on and self.val_n is None:
            raise ConfigError(
                "data.eval_on includes val but data.val_n is not set (how many validation rows?)"
            )
        for key in ("train_n", "test_n", "val_n"):
            check_int(getattr(self, key), f"data.{key}", minimum=1, none=True)
        check_choice(self.eval_split, "data.eval_split", ("test", "dev"))
        for task, opts in self.per_task.items():
            bad = set(opts) - {"train_n", "test_n", "val_n"}
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
    schedule: Schedule = "constant"
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    # AdamW kernel: auto (fused where torch has one) | fused | foreach | for-loop; see runner/optim.py
    optimizer_impl: OptimizerImpl = "auto"
    mixed_precision: Literal["no", "bf16"] = "no"
    eval_batch_size: int = 64
    log_every: int = 10
    max_steps_per_task: int | None = None
    # an optimizer step with an inf/NaN loss or gradient norm: stop the run (keeping the last good
    # checkpoint) or skip that step's update (counted per stage); see runner/guard.py
    nonfinite: Literal["stop", "skip"] = "stop"

    @config_errors()
    def __post_init__(self) -> None:
        for key in ("epochs", "lr"):
            check_number(getattr(self, key), f"train.{key}", low=0.0, low_open=True)
        for key in ("batch_size", "grad_accum", "eval_batch_size", "log_every"):
            check_int(getattr(self, key), f"train.{key}", minimum=1)
        check_number(self.warmup_ratio, "train.warmup_ratio", low=0.0, high=1.0, high_open=True)
        check_number(self.weight_decay, "train.weight_decay", low=0.0)
        check_number(self.max_grad_norm, "train.max_grad_norm", low=0.0, none=True)
        betas = check_list(
            self.betas,
            "train.betas",
            lambda b, f: check_number(b, f, low=0.0, high=1.0, high_open=True),
            "two numbers in [0, 1)",
        )
        if len(betas) != 2:
            raise invalid("train.betas", "a list of two numbers in [0, 1)", self.betas)
        self.betas = betas
        check_literals(self, "train.")
        check_int(self.max_steps_per_task, "train.max_steps_per_task", minimum=1, none=True)


@dataclass
class MethodConfig:
    name: str = "ft"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EndTaskConfig:
    """How continual pre-training scores a checkpoint: each end task is finetuned from a copy of the
    post-trained encoder with a new head (ContinualLM: lr 3e-5, batch 16, its per-task epochs)."""

    lr: float = 3e-5
    batch_size: int = 16
    epochs: float | None = None  # None: the domain's own value from domains.yaml (ContinualLM's)
    weight_decay: float = 0.01
    schedule: Schedule = "linear"
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    max_length: int = 164
    eval_batch_size: int = 64
    max_steps: int | None = None  # cap per end task (smoke runs)

    @config_errors()
    def __post_init__(self) -> None:
        where = "pretrain.end_task."
        check_number(self.lr, f"{where}lr", low=0.0, low_open=True)
        for key in ("batch_size", "max_length", "eval_batch_size"):
            check_int(getattr(self, key), f"{where}{key}", minimum=1)
        check_number(self.epochs, f"{where}epochs", low=0.0, low_open=True, none=True)
        check_int(self.max_steps, f"{where}max_steps", minimum=1, none=True)
        check_literals(self, where)


@dataclass
class PretrainConfig:
    """Continual pre-training (regime ``pretrain``): MLM on each domain's corpus, then end tasks.

    Steps per domain are given in optimizer steps or in samples (ContinualLM: 640000 samples at
    batch 248 = 2580 steps); a corpus shorter than that is cycled in epochs.
    """

    steps_per_domain: int | None = None
    samples_per_domain: int | None = None
    block_size: int = 164  # tokens per MLM block (ContinualLM's max_seq_length)
    mlm_probability: float = 0.15
    evaluate: Literal["every", "last"] = "every"  # the progressive matrix, or after the last domain only
    end_task: EndTaskConfig = field(default_factory=EndTaskConfig)
    cache_dir: str | None = None  # tokenized blocks (default $MIGU_CACHE, else ~/.cache/migu)
    # the untrained reference's end-task scores from cache_dir when the same encoder weights, rows,
    # recipe, seed and versions were scored before (every run of a seed repeats them); one process only
    reuse_reference: bool = True

    @config_errors()
    def __post_init__(self) -> None:
        if self.steps_per_domain is not None and self.samples_per_domain is not None:
            raise ConfigError("pretrain: give steps_per_domain or samples_per_domain, not both")
        for key in ("steps_per_domain", "samples_per_domain"):
            check_int(getattr(self, key), f"pretrain.{key}", minimum=1, none=True)
        check_int(self.block_size, "pretrain.block_size", minimum=8)
        check_number(
            self.mlm_probability, "pretrain.mlm_probability", low=0.0, high=1.0, low_open=True, high_open=True
        )
        check_literals(self, "pretrain.")

    def steps(self, batch_size: int, grad_accum: int) -> int | None:
        """Optimizer steps per domain (None: one epoch of the corpus)."""
        if self.steps_per_domain is not None:
            return self.steps_per_domain
        if self.samples_per_domain is not None:
            return math.ceil(self.samples_per_domain / (batch_size * grad_accum))
        return None


@dataclass
class InstructConfig:
    """LLM instruction tuning (regime ``instruct``): how rows are rendered, and how each stage is
    scored (each instruction set by its ``eval``: exact match or HumanEval; the general ability,
    the paper's forgetting measure, by lm-evaluation-harness tasks when ``general`` is set).
    Each epoch of a set is one stage (checkpoint, score, resume); AdamW's state and the learning
    rate schedule carry over between the epochs of one set."""

    template: Literal["auto", "chat", "plain"] = "auto"  # auto: the tokenizer's chat template if any
    overlong: Literal["truncate", "drop"] = "truncate"  # rows over model.max_length (counted)
    packing: bool = False
    max_new_tokens: int = 32  # exact-match generation budget
    eval_batch_size: int = 8
    humaneval: dict[str, Any] = field(default_factory=dict)  # migu.evals.HumanEvalConfig fields
    general: dict[str, Any] | None = None  # migu.evals.lm_eval_bridge.LmEvalConfig fields
    # write CL_Benchmark's COPA and BoolQA as local lm-eval tasks (migu_copa, migu_boolqa) from the
    # data root into the cache and add them to general.include_path: an offline general probe
    cl_benchmark_probes: bool = False

    @config_errors()
    def __post_init__(self) -> None:
        check_literals(self, "instruct.")
        check_int(self.max_new_tokens, "instruct.max_new_tokens", minimum=1)
        check_int(self.eval_batch_size, "instruct.eval_batch_size", minimum=1)
        from ..evals import HumanEvalConfig  # standard library only: cheap
        from ..evals.lm_eval_bridge import LmEvalConfig

        try:
            HumanEvalConfig(**self.humaneval)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"instruct.humaneval: {exc}") from None
        if self.general is not None:
            try:
                LmEvalConfig(**self.general)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"instruct.general: {exc}") from None


@dataclass
class PaperConfig:
    """The published number(s) a config reproduces, shown beside the measured ones by ``migu report``.

    ``values``: {results metric: published value in %}, the metric as the run's results name it
    (finetune: ``acc``, ``bwt``, ...; pretrain: ``final_mf1``, ``final_acc``; instruct:
    ``final_general``, ``final_score``, ...). ``source``: where the number comes from and how it was
    aggregated (e.g. "Table 2, mean over orders 1-3"). Bookkeeping only: not part of the config hash.
    """

    source: str = ""
    values: dict[str, float] = field(default_factory=dict)

    @config_errors()
    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise invalid(
                "paper.source", "where the published number comes from (a non-empty string)", self.source
            )
        if not self.values:
            raise invalid(
                "paper.values", "a mapping of at least one results metric to its published value", self.values
            )
        for k, v in self.values.items():
            if not isinstance(k, str) or not re.fullmatch(r"[a-z][a-z0-9_@.]*", k):
                raise invalid("paper.values", "keyed by results metric names (e.g. acc, final_mf1)", k)
            check_number(v, f"paper.values.{k}", low=-100.0, high=100.0)


@dataclass
class RunConfig:
    """One continual-learning run: an order of tasks, one model, one method, MIGU on or off.

    ``migu``: None = MIGU off; a mapping of MIGUConfig fields (``{}`` included) = on, its threshold
    defaulting to the method's paper threshold (resolved when the config is read).
    """

    name: str = "run"
    seed: int = 42
    order: str | None = None
    tasks: list[str] | None = None
    # what the order's stages are: labelled tasks (finetune), domain corpora (pretrain) or instruction
    # sets (instruct); auto: the order's regime
    regime: Literal["auto", "finetune", "pretrain", "instruct"] = "auto"
    data_root: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    migu: MIGUConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    instruct: InstructConfig = field(default_factory=InstructConfig)
    eval_baseline: bool = True  # evaluate the untrained model (for FWT)
    keep_checkpoints: bool = False  # keep every task's checkpoint (analysis) instead of the last
    tensorboard: bool = False
    paper: PaperConfig | None = None  # the published number(s) this config reproduces

    @config_errors()
    def __post_init__(self) -> None:
        if (self.order is None) == (self.tasks is None):
            raise ConfigError("config must give exactly one of 'order' (a registry name) or 'tasks' (a list)")
        if self.tasks is not None and not self.tasks:
            raise invalid("tasks", "a non-empty list of task names", self.tasks)
        if self.tasks is not None and len(set(self.tasks)) != len(self.tasks):
            dup = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
            raise ConfigError(f"tasks lists {dup} more than once: each task is one stage of the order")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON data (tuples as lists), the form saved with results."""
        return _plain(self)


def _plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def build_run_config(data: dict[str, Any]) -> RunConfig:
    """A validated RunConfig from a plain mapping (unknown keys and bad values are ConfigErrors).

    Also resolves what depends on the method: MIGU's threshold defaults to the method's paper
    threshold, and the method's options are checked by building it once.
    """
    data = dict(data)
    method = data.get("method") or {}
    name = method.get("name", "ft") if isinstance(method, dict) else "ft"
    try:
        cls = get_method_class(name)
    except ValueError as exc:
        raise ConfigError(f"method.name: {exc}") from None
    migu = data.get("migu")
    if migu is not None and not cls.migu_compatible:
        raise ConfigError(f"migu: method {cls.name!r} does not compose with MIGU; set migu: null")
    if isinstance(migu, dict) and "threshold" not in migu:
        data["migu"] = {**migu, "threshold": cls.default_threshold}
    config: RunConfig = build_dataclass(RunConfig, data)
    try:
        get_method(config.method.name, **config.method.options)
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"method.options: {exc}") from exc
    return config


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
    try:
        p = Path(path).resolve()
        found = p.is_file()
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the file system
        raise ConfigError(f"config file {str(path)!r} cannot be opened: {exc}") from None
    if not found:
        raise ConfigError(f"config file not found: {path}")
    if p in _seen:
        raise ConfigError(f"{p}: 'base' includes form a cycle")
    try:
        loaded = yaml_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot be read ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{p}: nested too deeply to be a config") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{p}: 'base' must be a file path")
    try:
        parent = read_yaml_config(p.parent / base, (*_seen, p))
    except ConfigError as exc:
        raise ConfigError(f"{p}: base {base!r}: {exc}") from None
    return _deep_merge(parent, loaded)


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
    return yaml.safe_dump(_plain(config), sort_keys=False)
