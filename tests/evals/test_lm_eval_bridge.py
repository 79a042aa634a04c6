"""lm-eval bridge: a tiny random Llama scored by lm-eval must match log-likelihoods computed by hand.

Everything is offline: an in-memory WordLevel tokenizer, a random 2-layer Llama, local JSONL tasks.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed (pip install 'migu[eval]')")

import datasets
import transformers
from support.data import REAL_ROOT, needs_real_data
from support.models import tiny_llama as _tiny_llama
from support.models import word_tokenizer

from migu.evals.lm_eval_bridge import (
    LmEvalConfig,
    LmEvalTaskError,
    check_tasks,
    evaluate_general,
    offline_hub,
)
from migu.evals.lm_eval_tasks import BOOLQA_TASK, COPA_TASK, write_cl_benchmark_tasks, write_local_mc_task

# Every word of the queries and choices below: the tokenizer's whole vocabulary (plus specials).
VOCAB_TEXT = (
    "the cat dog bird fish sat ran flew swam on in under over mat park sky sea red blue green small big "
    "what is where did go ? : . , Question Answer because therefore yes no"
)
QUERIES = [
    "Question: where did the cat go ? Answer:",
    "Question: what is blue ? Answer:",
    "the dog ran in the park because",
    "Question: where did the bird go ? Answer:",
    "the fish swam in the sea therefore",
    "Question: what is red ? Answer:",
    "the small cat sat on the mat because",
    "Question: what is green ? Answer:",
]
CL_ROOT = REAL_ROOT  # $MIGU_DATA, else ../shared/data beside the repo
needs_cl_benchmark = needs_real_data
CHOICES = [
    ["on the mat", "sky", "in the big blue sea"],
    ["the sky", "the sea", "red"],
    ["it is big", "yes", "the cat ran over the park"],
    ["over the sea", "under the mat", "sky"],
    ["no", "the bird flew", "it is small"],
    ["the big red dog", "green", "the mat"],
    ["the dog sat", "it is small", "no"],
    ["the sea", "the park", "the big green sky"],
]


@pytest.fixture(autouse=True)
def _isolated_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets caches the Arrow form of every loaded JSONL; keep it in the test's tmp dir."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")


@pytest.fixture(scope="module")
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Word-level tokenizer trained in memory; prepends BOS like Llama's, so lm-eval sees a BOS'd context."""
    return word_tokenizer(VOCAB_TEXT)


def tiny_llama(
    tokenizer: transformers.PreTrainedTokenizerBase, seed: int = 0
) -> transformers.LlamaForCausalLM:
    return _tiny_llama(tokenizer, seed=seed, max_positions=256)


@torch.no_grad()
def choice_loglikelihoods(
    model: torch.nn.Module,
    tokenizer: transformers.PreTrainedTokenizerBase,
    query: str,
    choices: Sequence[str],
) -> list[float]:
    """Sum of log p(choice token | context, earlier choice tokens): what lm-eval's multiple_choice ranks."""
    model.eval()
    context = tokenizer(query)["input_ids"]
    out = []
    for choice in choices:
        continuation = tokenizer(choice, add_special_tokens=False)["input_ids"]
        # lm-eval encodes query + " " + choice as one string; word-level tokens do not merge across it.
        assert tokenizer(f"{query} {choice}")["input_ids"] == context + continuation
        logits = model(torch.tensor([context + continuation])).logits[0].float()
        logprobs = torch.log_softmax(logits[:-1], dim=-1)
        positions = range(len(context) - 1, len(context) + len(continuation) - 1)
        out.append(sum(float(logprobs[p, t]) for p, t in zip(positions, continuation, strict=True)))
    return out


def rows_with_known_accuracy(
    lls: Sequence[Sequence[float]], n_right: int
) -> tuple[list[dict[str, Any]], list[float], list[float]]:
    """Gold = the argmax choice in the first ``n_right`` rows, another one after; hand acc and acc_norm."""
    rows, acc, acc_norm = [], [], []
    for i, (query, choices, row_lls) in enumerate(zip(QUERIES, CHOICES, lls, strict=True)):
        best = int(np.argmax(row_lls))
        gold = best if i < n_right else (best + 1) % len(choices)
        best_norm = int(np.argmax(np.array(row_lls) / np.array([len(c) for c in choices], dtype=float)))
        rows.append({"query": query, "choices": choices, "gold": gold})
        acc.append(float(best == gold))
        acc_norm.append(float(best_norm == gold))
    return rows, acc, acc_norm


def sample_stderr(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def local_config(tmp: Path, tasks: Sequence[str], **kwargs: Any) -> LmEvalConfig:
    return LmEvalConfig(tasks=tuple(tasks), include_path=[tmp], include_defaults=False, **kwargs)


# --------------------------------------------------------------------------- config and task files


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tasks": ()}, "tasks"),
        ({"tasks": ("a", "a")}, "tasks"),
        ({"tasks": ("bad name",)}, "tasks"),
        ({"num_fewshot": -1}, "num_fewshot"),
        ({"limit": 0}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"metric": ()}, "metric"),
        ({"task_metrics": {"other": "acc"}}, "task_metrics"),
        ({"include_path": []}, "include_path"),
        ({"include_defaults": "yes"}, "include_defaults"),
        ({"bootstrap_iters": -1}, "bootstrap_iters"),
        ({"max_length": 0}, "max_length"),
    ],
)
def test_config_rejects_bad_fields(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LmEvalConfig(**kwargs)


def test_config_defaults_and_metric_preference() -> None:
    config = LmEvalConfig(tasks=["a", "b"], metric="acc", task_metrics={"b": ["acc_norm", "acc"]})
    assert config.tasks == ("a", "b")
    assert config.metrics_for("a") == ("acc",)
    assert config.metrics_for("b") == ("acc_norm", "acc")
    assert LmEvalConfig().tasks == ("hellaswag", "winogrande", "arc_challenge")
    assert LmEvalConfig().metric == ("acc_norm", "acc")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"query": "", "choices": ["a", "b"], "gold": 0}, "query"),
        ({"query": "q", "choices": ["a"], "gold": 0}, "choices"),
        ({"query": "q", "choices": ["a", "a"], "gold": 0}, "choices"),
        ({"query": "q", "choices": "ab", "gold": 0}, "choices"),
        ({"query": "q", "choices": ["a", "b"], "gold": 2}, "gold"),
        ({"query": "q", "choices": ["a", "b"], "gold": True}, "gold"),
    ],
)
def test_write_local_mc_task_rejects_bad_rows(tmp_path: Path, row: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=rf"rows\[0\]: '{message}'"):
        write_local_mc_task(tmp_path, "t", [row])


def test_write_local_mc_task_files(tmp_path: Path) -> None:
    rows = [
        {"query": q, "choices": c, "gold": 0, "extra": i}
        for i, (q, c) in enumerate(zip(QUERIES, CHOICES, strict=True))
    ]
    path = write_local_mc_task(tmp_path / "tasks", "tiny", rows, fewshot_rows=rows[:2])
    spec = yaml.safe_load(path.read_text())
    assert spec["dataset_path"] == "json" and spec["output_type"] == "multiple_choice"
    assert [m["metric"] for m in spec["metric_list"]] == ["acc", "acc_norm"]
    test_file = Path(spec["dataset_kwargs"]["data_files"]["test"])
    assert test_file.is_absolute() and spec["fewshot_split"] == "train"
    assert [json.loads(line) for line in test_file.read_text().splitlines()] == rows


def test_offline_hub_sets_and_restores_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    before = (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    with offline_hub():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
        assert huggingface_hub.constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["HF_DATASETS_OFFLINE"] == "0"
    assert before == (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)


# --------------------------------------------------------------------------- check_tasks


def test_unknown_task_fails_naming_it_with_close_matches(tmp_path: Path) -> None:
    rows = [{"query": QUERIES[0], "choices": CHOICES[0], "gold": 0}]
    write_local_mc_task(tmp_path, "migu_tiny_mc", rows)
    with pytest.raises(LmEvalTaskError, match=r"'migu_tiny_mx' is not known.*Close matches: migu_tiny_mc"):
        check_tasks(local_config(tmp_path, ["migu_tiny_mc", "migu_tiny_mx"]))


def test_missing_include_path_fails(tmp_path: Path) -> None:
    with pytest.raises(LmEvalTaskError, match=r"include_path.*not a directory"):
        check_tasks(local_config(tmp_path / "absent", ["t"]))


def test_missing_local_data_file_fails_naming_task_and_file(tmp_path: Path) -> None:
    rows = [{"query": QUERIES[0], "choices": CHOICES[0], "gold": 0}]
    write_local_mc_task(tmp_path, "migu_gone", rows)
    data = tmp_path / "migu_gone.jsonl"
    data.unlink()
    with pytest.raises(LmEvalTaskError, match=rf"'migu_gone'.*data file '{data}' does not exist"):
        check_tasks(local_config(tmp_path, ["migu_gone"]))


def test_task_without_preferred_metric_fails(tmp_path: Path) -> None:
    rows = [{"query": QUERIES[0], "choices": CHOICES[0], "gold": 0}]
    write_local_mc_task(tmp_path, "migu_acc_only", rows, metrics=["acc"])
    with pytest.raises(LmEvalTaskError, match=r"'migu_acc_only' reports metrics \['acc'\]"):
        check_tasks(local_config(tmp_path, ["migu_acc_only"], metric="acc_norm"))


@pytest.fixture(scope="module")
def default_task_manager() -> Any:
    """lm-eval's full built-in index (~15k YAMLs, several seconds): built once for the tests that need it."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


@pytest.mark.slow
def test_hub_tasks_fail_offline_with_local_yaml_hint(default_task_manager: Any) -> None:
    """The paper's default suite lives on the hub: check_tasks must say so, not hang or download."""
    with pytest.raises(LmEvalTaskError) as info:
        check_tasks(LmEvalConfig(tasks=("hellaswag",)), task_manager=default_task_manager)
    message = str(info.value)
    assert "'hellaswag'" in message and "Rowan/hellaswag" in message
    assert "include_path" in message and "dataset_path: json" in message and "data_files" in message
    with pytest.raises(LmEvalTaskError, match=r"'arc_challange' is not known.*Close matches: arc_challenge"):
        check_tasks(LmEvalConfig(tasks=("arc_challange",)), task_manager=default_task_manager)
    with pytest.raises(LmEvalTaskError, match=r"'ai2_arc' is a (tag|group), not a single task"):
        check_tasks(LmEvalConfig(tasks=("ai2_arc",)), task_manager=default_task_manager)


# --------------------------------------------------------------------------- evaluate_general


def test_accuracy_matches_hand_computed_loglikelihoods(tmp_path: Path, tokenizer: Any) -> None:
    """lm-eval's acc / acc_norm equal argmax of summed (and length-normalised) choice log-likelihoods."""
    model = tiny_llama(tokenizer)
    lls = [choice_loglikelihoods(model, tokenizer, q, c) for q, c in zip(QUERIES, CHOICES, strict=True)]
    rows, acc, acc_norm = rows_with_known_accuracy(lls, n_right=5)
    assert acc_norm != acc  # the two metrics disagree on some row, so each is checked on its own
    write_local_mc_task(tmp_path, "migu_tiny_a", rows)
    write_local_mc_task(tmp_path, "migu_tiny_b", rows)
    config = local_config(
        tmp_path, ["migu_tiny_a", "migu_tiny_b"], metric="acc", task_metrics={"migu_tiny_b": "acc_norm"}
    )
    check_tasks(config)

    scores = evaluate_general(model, tokenizer, config)

    a, b = scores.tasks["migu_tiny_a"], scores.tasks["migu_tiny_b"]
    assert (a.metric, b.metric) == ("acc", "acc_norm")
    assert a.n == b.n == len(rows)
    assert a.score == pytest.approx(sum(acc) / len(acc)) == pytest.approx(5 / 8)
    assert b.score == pytest.approx(sum(acc_norm) / len(acc_norm))
    assert a.stderr == pytest.approx(sample_stderr(acc))
    assert b.stderr == pytest.approx(sample_stderr(acc_norm))
    assert all(0.0 <= s.score <= 1.0 for s in scores.tasks.values())
    assert scores.mean == pytest.approx((a.score + b.score) / 2)
    assert json.loads(json.dumps(scores.to_dict()))["tasks"]["migu_tiny_a"]["score"] == a.score


def test_limit_and_default_metric_preference(tmp_path: Path, tokenizer: Any) -> None:
    model = tiny_llama(tokenizer)
    lls = [choice_loglikelihoods(model, tokenizer, q, c) for q, c in zip(QUERIES, CHOICES, strict=True)]
    rows, _, acc_norm = rows_with_known_accuracy(lls, n_right=3)
    write_local_mc_task(tmp_path, "migu_tiny", rows)
    scores = evaluate_general(model, tokenizer, local_config(tmp_path, ["migu_tiny"], limit=4))
    (score,) = scores.tasks.values()
    assert (score.metric, score.n, scores.limit) == ("acc_norm", 4, 4)  # acc_norm preferred over acc
    assert score.score == pytest.approx(sum(acc_norm[:4]) / 4)
    assert scores.mean == score.score


def test_fewshot_split_evaluates(tmp_path: Path, tokenizer: Any) -> None:
    rows = [{"query": q, "choices": c, "gold": 0} for q, c in zip(QUERIES, CHOICES, strict=True)]
    write_local_mc_task(tmp_path, "migu_fewshot", rows[:4], fewshot_rows=rows[4:])
    config = local_config(tmp_path, ["migu_fewshot"], num_fewshot=2, metric="acc")
    scores = evaluate_general(tiny_llama(tokenizer), tokenizer, config)
    assert scores.num_fewshot == 2 and scores.tasks["migu_fewshot"].n == 4
    assert 0.0 <= scores.mean <= 1.0


def _inject_lora(model: torch.nn.Module) -> torch.nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    # init_lora_weights=False: B is random, so the adapters change the outputs and the check below is real.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return inject_adapter_in_model(lora, model)


def _peft_model(model: torch.nn.Module) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(model, lora)


@pytest.mark.parametrize("wrap", [_inject_lora, _peft_model], ids=["inject_adapter", "peft_model"])
def test_lora_models_evaluate_and_state_is_restored(
    tmp_path: Path, tokenizer: Any, wrap: Callable[[torch.nn.Module], torch.nn.Module]
) -> None:
    base = tiny_llama(tokenizer)
    base_lls = [choice_loglikelihoods(base, tokenizer, q, c) for q, c in zip(QUERIES, CHOICES, strict=True)]
    torch.manual_seed(1)
    model = wrap(base)
    lls = [choice_loglikelihoods(model, tokenizer, q, c) for q, c in zip(QUERIES, CHOICES, strict=True)]
    assert not np.allclose(lls, base_lls)  # the adapters are live in the forward lm-eval will run
    rows, acc, _ = rows_with_known_accuracy(lls, n_right=6)
    write_local_mc_task(tmp_path, "migu_lora", rows)

    model.train()
    frozen = next(m for name, m in model.named_modules() if name.endswith("layers.0.mlp"))
    frozen.eval()  # a submodule the caller keeps in eval mode must stay so
    flags = {name: m.training for name, m in model.named_modules()}
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)

    scores = evaluate_general(model, tokenizer, local_config(tmp_path, ["migu_lora"], metric="acc"))

    assert scores.tasks["migu_lora"].score == pytest.approx(sum(acc) / len(acc)) == pytest.approx(6 / 8)
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert model.training and not frozen.training
    # simple_evaluate reseeds the global RNGs; the bridge gives the caller's streams back untouched.
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_draws


# --------------------------------------------------------------------------- CL_Benchmark probe


@needs_cl_benchmark
def test_cl_benchmark_tasks_check_and_evaluate(tmp_path: Path, tokenizer: Any) -> None:
    assert CL_ROOT is not None
    out = tmp_path / "cl_tasks"
    written = write_cl_benchmark_tasks(CL_ROOT, out)
    assert set(written) == {COPA_TASK, BOOLQA_TASK}
    assert all(path.parent == out for path in written.values())

    copa = [json.loads(line) for line in (out / f"{COPA_TASK}.jsonl").read_text().splitlines()]
    raw_copa = json.loads((CL_ROOT / "COPA" / "COPA" / "test.json").read_text())
    assert len(copa) == len(raw_copa)
    # 'Which sentence is the effect of "The man turned on the faucet."? ...\nA: The toilet filled with
    # water.\nB: Water flowed from the spout.', label B
    assert copa[0]["query"] == "The man turned on the faucet therefore"
    assert copa[0]["choices"] == ["the toilet filled with water.", "water flowed from the spout."]
    assert copa[0]["gold"] == 1
    assert {row["relation"] for row in copa} == {"cause", "effect"}
    assert all(row["gold"] == "AB".index(raw["label"]) for row, raw in zip(copa, raw_copa, strict=True))

    boolqa = [json.loads(line) for line in (out / f"{BOOLQA_TASK}.jsonl").read_text().splitlines()]
    labels = json.loads((CL_ROOT / "BoolQA" / "BoolQA" / "labels.json").read_text())
    assert all(row["choices"] == labels for row in boolqa)
    assert all(row["choices"][row["gold"]] == row["label"] for row in boolqa)
    assert boolqa[0]["query"].startswith("Ethanol fuel -- ")
    assert boolqa[0]["query"].endswith(
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    )

    config = local_config(out, [COPA_TASK, BOOLQA_TASK], limit=4, batch_size=4)
    check_tasks(config)
    scores = evaluate_general(tiny_llama(tokenizer), tokenizer, config)
    assert {name: s.n for name, s in scores.tasks.items()} == {COPA_TASK: 4, BOOLQA_TASK: 4}
    assert all(0.0 <= s.score <= 1.0 for s in scores.tasks.values())
    assert scores.mean == pytest.approx(sum(s.score for s in scores.tasks.values()) / 2)


def test_cl_benchmark_tasks_reject_unknown_format(tmp_path: Path) -> None:
    for task, sentence, labels in (
        ("COPA", "not a copa sentence", ["A", "B"]),
        ("BoolQA", "question: q\npassage: p", ["True", "False"]),
    ):
        folder = tmp_path / "root" / task / task
        folder.mkdir(parents=True)
        (folder / "labels.json").write_text(json.dumps(labels))
        (folder / "test.json").write_text(json.dumps([{"sentence": sentence, "label": labels[0]}]))
    with pytest.raises(ValueError, match=r"test.json\[0\]: not a CL_Benchmark COPA sentence"):
        write_cl_benchmark_tasks(tmp_path / "root", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="CL_Benchmark COPA"):
        write_cl_benchmark_tasks(tmp_path / "absent", tmp_path / "out")
