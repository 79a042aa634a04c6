"""Reading finished runs and measuring MIGU statistics on their saved checkpoints (no training).

Analyses restore a run's model after a task (``restore_run``), attach a masker only to read the
statistic MIGU would compute (``masker.collecting()`` under ``torch.no_grad()``), and never call
``apply()``: the checkpoint is left exactly as saved.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine import COMPONENTS, Masker, MIGUConfig, attach, component_of
from ..methods import FT, get_method_class, paper_name
from ..runner.results import RunResults, load_results
from ..runner.state import checkpoint_dir as task_dir

log = logging.getLogger(__name__)

_LORA_SUFFIX = re.compile(r"\.lora_([AB])\.[^.]+$")
_BLOCK_PREFIX = re.compile(r"^(.*?\.\d+)\.")


def run_label(results: RunResults) -> str:
    """Short human name of a run: method name, plus MIGU and its threshold when on."""
    name = paper_name(results.method)
    if results.threshold is not None:
        name += f"+MIGU (T={results.threshold:g})"
    return name


def resolve_threshold(results: RunResults, override: float | None = None) -> float:
    """T for the updated-row sets: ``override``, else the run's MIGU T if > 0, else its method's
    paper T (FT's 0.7 for an unknown method).

    A run trained without MIGU (or at T = 0, which keeps every row) has no T of its own; its
    method's paper default makes its sets comparable to the same method's MIGU run.
    """
    if override is not None:
        MIGUConfig(threshold=override)  # validates 0 <= T < 1
        if override == 0.0:
            raise ValueError("threshold 0 keeps every row: all overlaps would be 1; choose T in (0, 1)")
        return float(override)
    t = results.threshold or 0.0
    if t > 0.0:
        return t
    try:
        return get_method_class(results.method).default_threshold
    except ValueError:
        return FT.default_threshold


def checkpoint_indices(which: str | int, tasks: Sequence[str], finished: int | None = None) -> list[int]:
    """Checkpoint index per task: ``last`` (every task on the last trained model), ``own`` (each
    task on the model right after it was trained), a task name, or a 0-based task index.

    ``finished``: tasks trained so far (default all); later checkpoints do not exist.
    """
    n = len(tasks)
    done = n if finished is None else finished
    if done < 1:
        raise ValueError("the run has no finished task: no checkpoint to analyse")
    if which == "last":
        return [done - 1] * n
    if which == "own":
        if done < n:
            raise ValueError(f"checkpoint 'own' needs every task trained; only {done} of {n} are")
        return list(range(n))
    if isinstance(which, str) and which in tasks:
        idx = tasks.index(which)
    else:
        try:
            idx = int(which)
        except (TypeError, ValueError):
            raise ValueError(
                f"checkpoint {which!r}: use 'last', 'own', a task name of the run {list(tasks)} or an index"
            ) from None
    if not 0 <= idx < done:
        raise ValueError(f"checkpoint {which!r} out of range: {done} of {n} tasks were trained")
    return [idx] * n


def base_layer_name(target_name: str) -> str:
    """The layer a target measures: LoRA ``x.lora_B.default`` -> ``x`` (B's statistic is x's output)."""
    return _LORA_SUFFIX.sub("", target_name).removesuffix(".base_layer")


def layer_component(name: str) -> str:
    """'qkv', 'o', 'ffn' or 'other' for a layer name."""
    return component_of(base_layer_name(name)) or "other"


def default_layer(names: Sequence[str]) -> str:
    """The paper's layer: the first FFN linear of the last transformer block (else the last layer)."""
    ffn = [n for n in names if layer_component(n) == "ffn"]
    if not ffn:
        return names[-1]
    m = _BLOCK_PREFIX.match(ffn[-1])
    prefix = m.group(1) + "." if m else ""
    return next(n for n in ffn if n.startswith(prefix))


def match_layer(names: Sequence[str], pattern: str) -> str:
    """The one layer named ``pattern`` exactly or by a dotted suffix (``layer.5.intermediate.dense``)."""
    if pattern in names:
        return pattern
    hits = [n for n in names if n.endswith("." + pattern)]
    if len(hits) == 1:
        return hits[0]
    shown = ", ".join(list(names)[:12]) + (" ..." if len(names) > 12 else "")
    if not hits:
        raise ValueError(f"layer {pattern!r} matches none of the {len(names)} analysed layers: {shown}")
    raise ValueError(f"layer {pattern!r} is ambiguous: {hits}")


def short_layers(names: Sequence[str]) -> list[str]:
    """Compact, still unambiguous axis labels: block number + the module path inside the block
    (``5 attention.output.dense``); ``enc``/``dec`` in front when both stacks are present (T5)."""
    prefixes = [m.group(1).split(".") if (m := _BLOCK_PREFIX.match(n)) else None for n in names]
    stacks = {p for pre in prefixes if pre for p in pre if p in ("encoder", "decoder")}
    out = []
    for name, pre in zip(names, prefixes, strict=True):
        if pre is None:
            out.append(name)
            continue
        side = next((p[:3] + " " for p in pre if p in ("encoder", "decoder")), "") if len(stacks) > 1 else ""
        out.append(f"{side}{pre[-1]} {name[len('.'.join(pre)) + 1 :]}")
    return out


def sample_rows(rows: Sequence[Any], n: int, seed: int) -> list[Any]:
    """``n`` rows drawn without replacement with a fixed seed (all rows when there are fewer)."""
    rows = list(rows)
    if n >= len(rows):
        return rows
    return random.Random(seed).sample(rows, n)


@dataclass
class RestoredRun:
    """A run's model after one task, with what is needed to feed it."""

    run_dir: Path
    results: RunResults
    task_index: int
    plan: Any
    family: Any
    model: nn.Module


def restore(
    run_dir: str | Path, task_index: int, data_root: str | Path | None = None, device: str = "cpu"
) -> RestoredRun:
    """The model of ``run_dir`` after ``task_index`` in eval mode (FileNotFoundError if no checkpoint)."""
    from ..runner.resume import restore_run

    run_dir = Path(run_dir)
    results = load_results(run_dir)
    if not (task_dir(run_dir, task_index) / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{run_dir} has no checkpoint after task {task_index} ({task_dir(run_dir, task_index)}): "
            "re-run it with keep_checkpoints=true, or analyse the last task's model"
        )
    plan, family, model = restore_run(run_dir, task_index, data_root)
    model.to(device).eval()
    return RestoredRun(run_dir, results, task_index, plan, family, model)


def analysis_config(results: RunResults, threshold: float, normalize: bool | None = None) -> MIGUConfig:
    """The run's statistic settings (normalisation, padding, bias) on every block component;
    ``normalize`` overrides the run's per-token L1 normalisation when given."""
    fields = dict(results.migu or {})
    fields.pop("mode", None)
    if normalize is not None:
        fields["normalize"] = normalize
    fields["threshold"] = threshold
    fields["components"] = tuple(COMPONENTS)
    if isinstance(fields.get("targets"), list | tuple):
        fields["targets"] = "default"  # a custom pattern list may name a single layer: measure all blocks
    return MIGUConfig.from_dict(fields)


@contextmanager
def measuring(model: nn.Module, config: MIGUConfig) -> Iterator[tuple[Masker, dict[str, str]]]:
    """A statistics-only masker on ``model`` and {target name: layer name} of the layers analysed.

    LoRA ``lora_A`` targets (length r) are skipped; a LoRA layer is measured through its first
    ``lora_B`` target, whose statistic is the whole layer output. Frozen weights are made
    trainable while measuring (the masker only reads trainable targets) and restored after.
    """
    masker = attach(model, config)
    layers: dict[str, str] = {}
    for t in masker.targets:
        m = _LORA_SUFFIX.search(t.name)
        layer = base_layer_name(t.name)
        if (m and m.group(1) == "A") or layer in layers.values():
            continue
        layers[t.name] = layer
    flags = {id(t.weight): t.weight.requires_grad for t in masker.targets}
    for t in masker.targets:
        t.weight.requires_grad_(True)
    try:
        yield masker, layers
    finally:
        for t in masker.targets:
            t.weight.requires_grad_(flags[id(t.weight)])
        masker.detach()


@torch.no_grad()
def mean_statistics(
    masker: Masker, layers: dict[str, str], run: RestoredRun, examples: Sequence[Any], batch_size: int = 16
) -> dict[str, torch.Tensor]:
    """{layer: mean L1-normalised magnitude over all real tokens of ``examples``} (CPU fp32)."""
    from ..models.base import model_device, to_device

    masker.reset()
    device = model_device(run.model)
    with masker.collecting():
        for start in range(0, len(examples), batch_size):
            batch = run.family.collate(list(examples[start : start + batch_size]))
            run.model(**to_device(batch, device))
    stats = masker.statistics()
    masker.reset()
    return {layer: stats[name].float().cpu() for name, layer in layers.items()}
