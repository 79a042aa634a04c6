"""Forgetting probe through lm-evaluation-harness: general-ability accuracy of an in-memory model.

The paper measures how much an instruction-tuned LLM forgets while it learns the CL task sequence
by the mean accuracy over HellaSwag, WinoGrande and ARC-challenge. This bridge runs lm-eval's
public API (``HFLM`` over the live model + ``simple_evaluate`` + ``TaskManager``) on the model being
trained, so the probe needs no checkpoint round trip and works for PEFT-wrapped models and for
models with LoRA layers injected in place.

Everything runs offline: the Hugging Face hub is switched off while lm-eval runs (and restored
afterwards), and :func:`check_tasks` resolves every task and loads its data *before* any model is
built or trained, so a missing task or dataset fails in seconds, not after hours of training.
Hub datasets (hellaswag, ...) therefore work only when they are already in the local datasets
cache; otherwise point ``LmEvalConfig.include_path`` at local task YAMLs
(``migu.evals.lm_eval_tasks``: ``write_local_mc_task`` writes one, ``write_cl_benchmark_tasks``
turns CL_Benchmark's COPA and BoolQA into two).

lm-eval is an optional dependency (``pip install 'migu[eval]'``); it is imported on first use.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import importlib
import logging
import math
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..validation import check_bool, check_int, invalid
from .lm_eval_tasks import TASK_NAME

if TYPE_CHECKING:
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager
    from torch import nn
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_TASKS: tuple[str, ...] = ("hellaswag", "winogrande", "arc_challenge")
# lm-eval's usual report: acc_norm where the task defines it (hellaswag, arc), acc otherwise (winogrande).
DEFAULT_METRICS: tuple[str, ...] = ("acc_norm", "acc")
# `datasets` packaged builders that read local files named by `dataset_kwargs.data_files`.
LOCAL_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow"})

_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE")
# The libraries read the env vars above once, at import; these module flags are what they check at
# call time, so the env alone would not switch an already-imported `datasets` offline.
_OFFLINE_FLAGS = (
    ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
    ("datasets.config", "HF_HUB_OFFLINE"),
    ("datasets.config", "HF_DATASETS_OFFLINE"),
    ("evaluate.config", "HF_EVALUATE_OFFLINE"),
)
_INSTALL_HINT = "lm-evaluation-harness is not installed: pip install 'migu[eval]' (or pip install lm-eval)"


class LmEvalTaskError(ValueError):
    """A requested lm-eval task cannot be evaluated here: unknown name, or no data available offline."""


@dataclass
class LmEvalConfig:
    """Which lm-eval tasks make up the general score, and how they are run.

    Args:
        tasks: lm-eval task names (single tasks, not groups or tags). The default is the paper's
            forgetting suite, which needs the datasets in the local cache (the hub is unreachable).
        include_path: directories of extra task YAMLs, searched after lm-eval's built-in tasks
            (a local task of the same name overrides the built-in one).
        include_defaults: also index lm-eval's ~15k built-in tasks (about 10 s); ``False`` when
            every task is local makes :func:`check_tasks` near instant.
        num_fewshot: in-context examples per question (tasks whose YAML pins ``num_fewshot: 0``
            keep 0, as lm-eval does).
        limit: evaluate only the first ``limit`` rows of each task (None: all rows).
        batch_size: lm-eval's batch size for loglikelihood requests.
        metric: metric names in order of preference; each task reports the first one it has.
        task_metrics: per-task preference overriding ``metric`` (task name -> name or names).
        max_length: context length lm-eval truncates to (None: from the model config).
        bootstrap_iters: passed to lm-eval; > 0 gives a standard error (closed form for accuracy
            means, so cheap), 0 skips it.
    """

    tasks: Sequence[str] = DEFAULT_TASKS
    include_path: str | Path | Sequence[str | Path] | None = None
    include_defaults: bool = True
    num_fewshot: int = 0
    limit: int | None = None
    batch_size: int = 8
    metric: str | Sequence[str] = DEFAULT_METRICS
    task_metrics: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    max_length: int | None = None
    bootstrap_iters: int = 1000

    def __post_init__(self) -> None:
        given = self.tasks
        if isinstance(self.tasks, str):
            self.tasks = (self.tasks,)
        self.tasks = tuple(self.tasks)
        if not self.tasks:
            raise invalid("LmEvalConfig.tasks", "a non-empty list of lm-eval task names", given)
        for name in self.tasks:
            if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
                raise invalid(
                    "LmEvalConfig.tasks",
                    "a list of lm-eval task names (letters, digits, '_', '.', '-')",
                    name,
                )
        if len(set(self.tasks)) != len(self.tasks):
            raise invalid("LmEvalConfig.tasks", "a list of distinct lm-eval task names", list(self.tasks))
        if self.include_path is not None:
            given = self.include_path
            paths = [self.include_path] if isinstance(self.include_path, str | Path) else self.include_path
            self.include_path = tuple(str(Path(p).expanduser()) for p in paths)
            if not self.include_path:
                raise invalid(
                    "LmEvalConfig.include_path", "one or more directories (null for no local tasks)", given
                )
        check_bool(self.include_defaults, "LmEvalConfig.include_defaults")
        check_int(self.num_fewshot, "LmEvalConfig.num_fewshot", minimum=0)
        check_int(self.limit, "LmEvalConfig.limit", minimum=1, none=True)
        check_int(self.batch_size, "LmEvalConfig.batch_size", minimum=1)
        check_int(self.max_length, "LmEvalConfig.max_length", minimum=1, none=True)
        check_int(self.bootstrap_iters, "LmEvalConfig.bootstrap_iters", minimum=0)
        self.metric = _metric_tuple("metric", self.metric)
        self.task_metrics = {
            task: _metric_tuple(f"task_metrics[{task!r}]", names) for task, names in self.task_metrics.items()
        }
        unknown = sorted(set(self.task_metrics) - set(self.tasks))
        if unknown:
            raise invalid("LmEvalConfig.task_metrics", f"keyed by tasks in {list(self.tasks)}", unknown)

    def metrics_for(self, task: str) -> tuple[str, ...]:
        """The metric preference of one task."""
        return tuple(self.task_metrics.get(task, self.metric))


def _metric_tuple(name: str, value: str | Sequence[str]) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise invalid(f"LmEvalConfig.{name}", "one or more metric names", value)
    return names


@dataclass(frozen=True)
class TaskScore:
    """One task's result: the chosen metric as a fraction, its standard error (if lm-eval gave one), rows."""

    task: str
    metric: str
    score: float
    stderr: float | None
    n: int


@dataclass(frozen=True)
class GeneralScores:
    """Per-task scores and their unweighted mean, the paper's general-ability (forgetting) measure."""

    tasks: dict[str, TaskScore]
    mean: float
    num_fewshot: int
    limit: int | None
    lm_eval_version: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for result files."""
        out = asdict(self)
        out["tasks"] = {name: asdict(score) for name, score in self.tasks.items()}
        return out


def _require_lm_eval() -> Any:
    try:
        return importlib.import_module("lm_eval")
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Hugging Face hub, datasets and evaluate offline inside the block; env and flags restored after.

    Sets the env vars and the libraries' import-time flags (see ``_OFFLINE_FLAGS``): the flags are
    what an already imported ``datasets`` checks, the env covers anything imported inside the block.
    """
    modules = []
    for module_name, attr in _OFFLINE_FLAGS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, attr):
            modules.append((module, attr, getattr(module, attr)))
    saved_env = {key: os.environ.get(key) for key in _OFFLINE_ENV}
    try:
        os.environ.update(dict.fromkeys(_OFFLINE_ENV, "1"))
        for module, attr, _ in modules:
            setattr(module, attr, True)
        yield
    finally:
        for module, attr, value in modules:
            setattr(module, attr, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """simple_evaluate reseeds python/numpy/torch; a probe between CL tasks must not change training's RNG."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


# --------------------------------------------------------------------------- task resolution


def _build_task_manager(config: LmEvalConfig) -> TaskManager:
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    for path in config.include_path or ():
        if not Path(path).is_dir():
            raise LmEvalTaskError(f"LmEvalConfig.include_path: {path!r} is not a directory")
    return TaskManager(include_path=list(config.include_path or ()), include_defaults=config.include_defaults)


def _unknown_task_message(name: str, manager: TaskManager, config: LmEvalConfig, version: str) -> str:
    where = "lm-eval's built-in tasks" if config.include_defaults else "no built-in tasks"
    if config.include_path:
        where += f" and include_path {list(config.include_path)}"
    close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return (
        f"lm-eval task {name!r} is not known to lm-eval {version} (searched {where}).{hint} "
        "A local task must be a YAML whose `task:` is that name, in a directory of "
        "LmEvalConfig.include_path (lm-eval skips YAMLs that fail to parse without an error)."
    )


def _data_files(dataset_kwargs: Mapping[str, Any]) -> list[str]:
    files = dataset_kwargs.get("data_files")
    if isinstance(files, Mapping):
        files = list(files.values())
    if isinstance(files, str):
        files = [files]
    out: list[str] = []
    for item in files or ():
        out.extend([item] if isinstance(item, str) else list(item))
    return out


def _check_local_data(name: str, cfg: Mapping[str, Any], yaml_path: Path | None) -> None:
    """Missing local data files fail here, before lm-eval builds the task (and before any training)."""
    builder = cfg.get("dataset_path")
    source = f" ({yaml_path})" if yaml_path else ""
    if builder in LOCAL_BUILDERS:
        kwargs = cfg.get("dataset_kwargs") or {}
        files = _data_files(kwargs)
        if not files and not kwargs.get("data_dir"):
            raise LmEvalTaskError(
                f"lm-eval task {name!r}{source} uses `dataset_path: {builder}` but names no "
                "`dataset_kwargs: {data_files: ...}`"
            )
        if kwargs.get("data_dir"):
            return  # data_files are then relative to data_dir; datasets resolves them
        for path in files:
            found = glob.glob(os.path.expanduser(path)) if glob.has_magic(path) else None
            if found == [] or (found is None and not Path(path).expanduser().exists()):
                raise LmEvalTaskError(
                    f"lm-eval task {name!r}{source}: data file {path!r} does not exist "
                    f"(relative paths are resolved against the working directory {os.getcwd()!r})"
                )
    elif (
        isinstance(builder, str)
        and builder.startswith(("/", "./", "../", "~"))
        and not Path(builder).expanduser().exists()
    ):
        raise LmEvalTaskError(f"lm-eval task {name!r}{source}: dataset_path {builder!r} does not exist")


def _unavailable_message(name: str, cfg: Mapping[str, Any], err: Exception) -> str:
    builder = cfg.get("dataset_path")
    dataset = repr(builder) + (f" (config {cfg['dataset_name']!r})" if cfg.get("dataset_name") else "")
    error = f"{type(err).__name__}: {err}"
    message = f"lm-eval task {name!r} could not be built offline from dataset {dataset}: {error}"
    if builder not in LOCAL_BUILDERS:
        message += (
            ". Its data lives on the Hugging Face hub, which is not reachable (the bridge runs lm-eval with "
            "HF_HUB_OFFLINE=1) and the dataset is not in the local datasets cache. Point "
            "LmEvalConfig.include_path at a directory with a local task YAML of the same name that uses "
            "`dataset_path: json` and `dataset_kwargs: {data_files: {test: /path/to/rows.jsonl}}` "
            "(migu.evals.lm_eval_tasks.write_local_mc_task writes one)."
        )
    return message


def _load_tasks(
    config: LmEvalConfig, task_manager: TaskManager | None = None
) -> tuple[TaskManager, dict[str, Task]]:
    """Resolve names, check local data, then build every task (loads its data) with the hub offline."""
    lm_eval = _require_lm_eval()
    manager = task_manager if task_manager is not None else _build_task_manager(config)
    singles = set(manager.all_subtasks)
    configs: dict[str, Mapping[str, Any]] = {}
    for name in config.tasks:
        entry = manager.task_index.get(name)
        if entry is None:
            raise LmEvalTaskError(_unknown_task_message(name, manager, config, lm_eval.__version__))
        if name not in singles:
            kind = "group" if name in manager.all_groups else "tag"
            raise LmEvalTaskError(
                f"lm-eval name {name!r} is a {kind}, not a single task; the general score averages single "
                "tasks, so list the tasks you want in LmEvalConfig.tasks"
            )
        configs[name] = entry.cfg or {}
        _check_local_data(name, configs[name], entry.yaml_path)

    tasks: dict[str, Task] = {}
    with offline_hub(), _preserved_rng():  # building a task (its datasets load) draws from `random`
        for name in config.tasks:
            try:
                tasks[name] = manager.load([name])["tasks"][name]
            except Exception as err:  # any failure to build the task is "not evaluable here"
                raise LmEvalTaskError(_unavailable_message(name, configs[name], err)) from err
    for name, task in tasks.items():
        available = sorted(task.higher_is_better())
        if not set(config.metrics_for(name)) & set(available):
            raise LmEvalTaskError(
                f"lm-eval task {name!r} reports metrics {available}, none of the preferred "
                f"{list(config.metrics_for(name))}; set LmEvalConfig.task_metrics[{name!r}]"
            )
    return manager, tasks


def check_tasks(config: LmEvalConfig, *, task_manager: TaskManager | None = None) -> None:
    """Fail fast, before any model is loaded or trained, if a task of ``config`` cannot be evaluated.

    Every name must be a single lm-eval task (built-in or under ``include_path``); local data files
    must exist; every task is built with the hub offline (this loads its data, so a hub dataset that
    is not cached fails here); and each task must report one of the preferred metrics. Raises
    :class:`LmEvalTaskError` naming the task. ``task_manager`` reuses an already built index.
    """
    _load_tasks(config, task_manager)
    log.info("lm-eval tasks available offline: %s", ", ".join(config.tasks))


# --------------------------------------------------------------------------- evaluation


def _pick_metric(
    name: str, row: Mapping[str, Any], preferred: Sequence[str]
) -> tuple[str, float, float | None]:
    """First preferred metric among lm-eval's ``"metric,filter"`` keys (filter ``none`` if several)."""
    by_metric: dict[str, dict[str, Any]] = {}
    for key, value in row.items():
        metric, sep, filt = key.partition(",")
        if sep and not metric.endswith("_stderr"):
            by_metric.setdefault(metric, {})[filt] = value
    for metric in preferred:
        if metric not in by_metric:
            continue
        filters = by_metric[metric]
        filt = "none" if "none" in filters else sorted(filters)[0]
        score = float(filters[filt])
        if not 0.0 <= score <= 1.0:
            raise ValueError(
                f"lm-eval task {name!r}: metric {metric!r} is {score}, not a fraction in [0, 1]; the general "
                "score averages accuracies, so choose an accuracy-like metric in LmEvalConfig.task_metrics"
            )
        stderr = row.get(f"{metric}_stderr,{filt}")
        ok = isinstance(stderr, int | float) and math.isfinite(stderr)
        return metric, score, float(stderr) if ok else None
    raise LmEvalTaskError(
        f"lm-eval task {name!r}: none of {list(preferred)} in its results {sorted(by_metric)}"
    )


def evaluate_general(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    config: LmEvalConfig | None = None,
    *,
    task_manager: TaskManager | None = None,
) -> GeneralScores:
    """Score the in-memory ``model`` on ``config.tasks`` with lm-eval and average them (the general score).

    ``model`` is a causal LM (``PreTrainedModel``, a ``peft.PeftModel``, or one with LoRA layers injected)
    on any device; it is evaluated as it is, in eval mode under ``torch.no_grad``. Every module's
    training flag and the python/numpy/torch RNG states are restored afterwards, so calling this between
    CL tasks does not perturb training. The tasks are checked (:func:`check_tasks`) first.
    """
    config = config if config is not None else LmEvalConfig()
    lm_eval = _require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    manager, tasks = _load_tasks(config, task_manager)
    training = [(module, module.training) for module in model.modules()]
    had_pad = tokenizer.pad_token is not None
    model.eval()
    try:
        with offline_hub(), _preserved_rng(), torch.no_grad():
            lm = HFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=config.batch_size,
                max_length=config.max_length,
            )
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=list(tasks.values()),
                task_manager=manager,
                num_fewshot=config.num_fewshot,
                limit=config.limit,
                bootstrap_iters=config.bootstrap_iters,
                log_samples=False,
            )
    finally:
        for module, flag in training:
            module.training = flag
    if not had_pad:
        log.warning("lm-eval gave the tokenizer a pad token (%r); it was unset before", tokenizer.pad_token)
    if results is None:  # only a non-zero rank of a distributed run gets None
        raise RuntimeError("lm-eval returned no results (not rank 0 of a distributed run?)")

    scores: dict[str, TaskScore] = {}
    for name in config.tasks:
        metric, score, stderr = _pick_metric(name, results["results"][name], config.metrics_for(name))
        n = int(results["n-samples"][name]["effective"])
        scores[name] = TaskScore(task=name, metric=metric, score=score, stderr=stderr, n=n)
    mean = sum(s.score for s in scores.values()) / len(scores)
    log.info(
        "general score %.4f (%s)",
        mean,
        ", ".join(f"{s.task} {s.metric}={s.score:.4f}" for s in scores.values()),
    )
    return GeneralScores(
        tasks=scores,
        mean=mean,
        num_fewshot=config.num_fewshot,
        limit=config.limit,
        lm_eval_version=str(lm_eval.__version__),
    )


__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_TASKS",
    "GeneralScores",
    "LmEvalConfig",
    "LmEvalTaskError",
    "TaskScore",
    "check_tasks",
    "evaluate_general",
    "offline_hub",
]
