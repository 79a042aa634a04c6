"""Local multiple-choice tasks for lm-evaluation-harness, written as task YAML + JSONL rows: any
rows (``write_local_mc_task``), and CL_Benchmark's COPA and BoolQA (``write_cl_benchmark_tasks``),
so the general-ability probe of ``lm_eval_bridge`` runs offline. Writing them needs no lm-eval."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..validation import check_int, invalid

log = logging.getLogger(__name__)

COPA_TASK = "migu_copa"
BOOLQA_TASK = "migu_boolqa"
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # what lm-eval accepts as a task name


def _check_rows(rows: Sequence[Mapping[str, Any]], what: str) -> list[dict[str, Any]]:
    if not rows:
        raise ValueError(f"{what}: no rows")
    out = []
    for i, row in enumerate(rows):
        query, choices, gold = row.get("query"), row.get("choices"), row.get("gold")
        if not isinstance(query, str) or not query:
            raise invalid(f"{what}[{i}]: 'query'", "a non-empty string", query)
        if (
            not isinstance(choices, Sequence)
            or isinstance(choices, str)
            or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)
            or len(set(choices)) != len(choices)
        ):
            raise invalid(f"{what}[{i}]: 'choices'", "two or more distinct non-empty strings", choices)
        check_int(gold, f"{what}[{i}]: 'gold'", minimum=0, maximum=len(choices) - 1)  # an index into choices
        out.append({**row, "choices": list(choices)})
    return out


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_local_mc_task(
    directory: str | Path,
    name: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    fewshot_rows: Sequence[Mapping[str, Any]] | None = None,
    description: str = "",
    target_delimiter: str = " ",
    metrics: Sequence[str] = ("acc", "acc_norm"),
) -> Path:
    """Write an offline lm-eval multiple-choice task: ``<name>.yaml`` + ``<name>.jsonl`` in ``directory``.

    Each row is ``{"query": context, "choices": [str, ...], "gold": index}`` (extra keys are kept in the
    JSONL). lm-eval scores each choice as the continuation ``target_delimiter + choice`` of
    ``description + query``; ``acc`` is the argmax of the summed log-likelihoods, ``acc_norm`` of them
    divided by the choice's length in characters. ``fewshot_rows`` (same shape) become the split that
    few-shot examples are drawn from. Data paths in the YAML are absolute (``datasets`` would resolve
    relative ones against the working directory). Returns the YAML path; put ``directory`` in
    ``LmEvalConfig.include_path``.
    """
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise ValueError(f"name: {name!r} is not a task name (letters, digits, '_', '.', '-')")
    if not metrics or not all(isinstance(m, str) and m for m in metrics):
        raise ValueError(f"metrics: give one or more metric names, got {metrics!r}")
    directory = Path(directory).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    data_files = {"test": str(directory / f"{name}.jsonl")}
    _write_jsonl(Path(data_files["test"]), _check_rows(rows, "rows"))
    if fewshot_rows is not None:
        data_files["train"] = str(directory / f"{name}.fewshot.jsonl")
        _write_jsonl(Path(data_files["train"]), _check_rows(fewshot_rows, "fewshot_rows"))
    spec: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": data_files},
        "test_split": "test",
        **({"fewshot_split": "train"} if fewshot_rows is not None else {}),
        "output_type": "multiple_choice",
        # Feature names: lm-eval returns doc[name] when the string is a column.
        "doc_to_text": "query",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": target_delimiter,
        **({"description": description} if description else {}),
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics],
        "metadata": {"version": 1.0, "source": "migu.evals.lm_eval_bridge.write_local_mc_task"},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    log.info("wrote lm-eval task %s (%d rows) to %s", name, len(rows), path)
    return path


# CL_Benchmark COPA sentence, e.g.
#   Which sentence is the effect of "The man turned on the faucet."? Choose one between A and B.
#   A: The toilet filled with water.
#   B: Water flowed from the spout.
# with label "A" or "B" (labels.json: ["A", "B"]).
_COPA = re.compile(
    r'Which sentence is the (?P<relation>cause|effect) of "(?P<premise>.*)"\? Choose one between A and B\.'
    r"\nA: (?P<a>.*)\nB: (?P<b>.*)",
    re.DOTALL,
)
# CL_Benchmark BoolQA sentence: "question: <question>\npassage: <title -- passage>", label "True"/"False".
_BOOLQA = re.compile(r"question: (?P<question>.*?)\npassage: (?P<passage>.*)", re.DOTALL)
_COPA_CONNECTOR = {"cause": "because", "effect": "therefore"}


def _lower_first(text: str) -> str:
    """Options continue the premise mid-sentence; keep the pronoun I (and I'm, I'd...) capitalised."""
    if text[:1] == "I" and (len(text) == 1 or not text[1].isalpha()):
        return text
    return text[:1].lower() + text[1:]


def _read_cl_split(root: Path, task: str, split: str) -> tuple[list[dict[str, Any]], list[str], Path]:
    folder = root / task / task
    data_path, labels_path = folder / f"{split}.json", folder / "labels.json"
    for path in (data_path, labels_path):
        if not path.is_file():
            raise FileNotFoundError(f"CL_Benchmark {task}: {path} not found")
    rows = json.loads(data_path.read_text(encoding="utf-8"))
    labels = json.loads(labels_path.read_text(encoding="utf-8"))
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{data_path}: expected a non-empty JSON list of rows")
    for i, row in enumerate(rows):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("sentence"), str)
            or row.get("label") not in labels
        ):
            raise ValueError(
                f"{data_path}[{i}]: expected {{'sentence': str, 'label': one of {labels}}}, got {row!r}"
            )
    return rows, labels, data_path


def _copa_rows(
    rows: Sequence[Mapping[str, Any]], labels: Sequence[str], source: Path
) -> list[dict[str, Any]]:
    """COPA in lm-eval's SuperGLUE form: "<premise without final period> because|therefore" + " <option>"."""
    if sorted(labels) != ["A", "B"]:
        raise ValueError(f"{source}: COPA labels must be ['A', 'B'], got {labels}")
    out = []
    for i, row in enumerate(rows):
        match = _COPA.fullmatch(row["sentence"].strip())
        if match is None:
            raise ValueError(f"{source}[{i}]: not a CL_Benchmark COPA sentence: {row['sentence']!r}")
        premise = match["premise"].strip()
        premise = premise[:-1] if premise[-1:] in ".!?" else premise
        choices = [_lower_first(match[key].strip()) for key in ("a", "b")]
        out.append(
            {
                "query": f"{premise} {_COPA_CONNECTOR[match['relation']]}",
                "choices": choices,
                "gold": "AB".index(row["label"]),
                "premise": match["premise"].strip(),
                "relation": match["relation"],
                "label": row["label"],
            }
        )
    return out


def _boolqa_rows(
    rows: Sequence[Mapping[str, Any]], labels: Sequence[str], source: Path
) -> list[dict[str, Any]]:
    """BoolQ as lm-eval renders it, "<passage>\\nQuestion: <question>?\\nAnswer:"; labels are the choices."""
    out = []
    for i, row in enumerate(rows):
        match = _BOOLQA.fullmatch(row["sentence"].strip())
        if match is None:
            raise ValueError(f"{source}[{i}]: not a CL_Benchmark BoolQA sentence: {row['sentence'][:200]!r}")
        question = match["question"].strip().rstrip("?")
        out.append(
            {
                "query": f"{match['passage'].strip()}\nQuestion: {question}?\nAnswer:",
                "choices": list(labels),
                "gold": list(labels).index(row["label"]),
                "label": row["label"],
            }
        )
    return out


def write_cl_benchmark_tasks(
    cl_benchmark_root: str | Path, out_dir: str | Path, *, split: str = "test", max_rows: int | None = None
) -> dict[str, Path]:
    """Turn CL_Benchmark's COPA and BoolQA into the local lm-eval tasks ``migu_copa`` and ``migu_boolqa``.

    A real, offline general-ability probe. CL_Benchmark rows are ``{"sentence", "label"}`` with the label
    strings in ``labels.json``. COPA's sentence holds the cause/effect question, the premise and options
    A/B; it becomes lm-eval's SuperGLUE COPA prompt (premise, final period dropped, + " because" /
    " therefore"), the two option texts (first letter lowercased, as lm-eval does) as choices.
    BoolQA's ``question: ...\\npassage: ...`` becomes ``<passage>\\nQuestion: <question>?\\nAnswer:``
    with the labels (``True`` / ``False``) as choices. Only ``out_dir`` is written; returns task -> YAML.
    """
    check_int(max_rows, "max_rows", minimum=1, none=True)
    root = Path(cl_benchmark_root).expanduser()
    written = {}
    for task_name, folder, convert in (
        (COPA_TASK, "COPA", _copa_rows),
        (BOOLQA_TASK, "BoolQA", _boolqa_rows),
    ):
        rows, labels, source = _read_cl_split(root, folder, split)
        converted = convert(rows[:max_rows], labels, source)
        written[task_name] = write_local_mc_task(out_dir, task_name, converted)
    return written


__all__ = ["BOOLQA_TASK", "COPA_TASK", "write_cl_benchmark_tasks", "write_local_mc_task"]
