"""LLM instruction tuning through the runner: epochs as stages, evaluators, resume inside a set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from support.data import write_benchmark
from support.models import word_tokenizer

from migu.evals.lm_eval_tasks import write_local_mc_task
from migu.runner import loop as loop_mod
from migu.runner.config import ConfigError, RunConfig, build_run_config
from migu.runner.execute import run

WORDS = "What is the topic of the following paragraph Choose one from option Option World Sports Business "
WORDS += (
    "Science or Technology Answer Instruction Response summit goal shares chip text train test TC agnews "
)
WORDS += " ".join(str(i) for i in range(64))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("word_tok")
    word_tokenizer(WORDS).save_pretrained(str(path))
    return str(path)


def _config(root: Path, tok_dir: str, **over: Any) -> RunConfig:
    llama = {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "vocab_size": 256,
    }
    data: dict[str, Any] = {
        "name": "tiny_instruct",
        "seed": 3,
        "tasks": ["demo_agnews"],
        "data_root": str(root),
        "model": {"name": "minilm", "random_init": llama, "tokenizer": tok_dir, "max_length": 96},
        "method": {"name": "lora"},
        "migu": {"threshold": 0.5},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "lr": 5e-3,
            "schedule": "linear",
            "warmup_ratio": 0.25,
            "log_every": 100,
        },
        "instruct": {"template": "plain", "max_new_tokens": 4, "eval_batch_size": 8},
    }
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    return build_run_config(data)


def test_epochs_are_stages_with_one_optimization(
    tmp_path: Path, tok_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_benchmark(tmp_path / "CL_Benchmark", n_train=48, n_test=8)
    seen: list[Any] = []
    real = loop_mod.train_task

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append((args[1].task_index, args[1].task_name, kwargs["continuation"]))
        return real(*args, **kwargs)

    monkeypatch.setattr("migu.runner.execute.train_task", spy)
    res = run(_config(root, tok_dir, keep_checkpoints=True), tmp_path / "run")
    assert res.regime == "instruct" and res.stages == ["demo_agnews@1", "demo_agnews@2"]
    assert res.columns["score"] == ["demo_agnews"] and len(res.matrices["score"]) == 2
    assert all(0.0 <= row[0] <= 1.0 for row in res.matrices["score"])
    # both epochs are one CL task for the method, on one schedule: 6 steps per epoch of 48 rows
    (i0, n0, c0), (i1, n1, c1) = seen
    assert (i0, n0, i1, n1) == (0, "demo_agnews", 0, "demo_agnews")
    assert (c0.start_step, c0.total_steps, c0.optimizer_state) == (0, 12, None)
    assert (c1.start_step, c1.total_steps) == (6, 12) and c1.optimizer_state is not None
    saved = load_file(str(tmp_path / "run/checkpoints/task_00/optimizer.safetensors"))
    assert saved and all(k.endswith(("exp_avg", "exp_avg_sq", "step")) for k in saved)


def test_resume_inside_a_set_continues_its_optimizer(
    tmp_path: Path, tok_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_benchmark(tmp_path / "CL_Benchmark", n_train=48, n_test=8)
    cfg = _config(root, tok_dir, train={"epochs": 3}, keep_checkpoints=True)
    full = run(cfg, tmp_path / "full")
    real = loop_mod.train_task
    calls = {"n": 0}

    def crash_in_epoch_3(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr("migu.runner.execute.train_task", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "resumed")
    monkeypatch.setattr("migu.runner.execute.train_task", real)
    resumed = run(cfg, tmp_path / "resumed")
    assert resumed.matrices == full.matrices
    a = load_file(str(tmp_path / "full/checkpoints/task_02/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/task_02/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the optimizer state came back from the checkpoint


def test_general_score_from_a_local_lm_eval_task(tmp_path: Path, tok_dir: str) -> None:
    root = write_benchmark(tmp_path / "CL_Benchmark", n_train=16, n_test=8)
    rows = [{"query": f"summit {i}", "choices": ["goal", "chip"], "gold": i % 2} for i in range(6)]
    write_local_mc_task(tmp_path / "tasks", "tiny_mc", rows)
    general = {"tasks": ["tiny_mc"], "include_path": [str(tmp_path / "tasks")], "include_defaults": False}
    res = run(_config(root, tok_dir, train={"epochs": 1}, instruct={"general": general}), tmp_path / "run")
    assert res.columns["general"] == ["mean", "tiny_mc"]
    assert (
        len(res.matrices["general"]) == 1 and res.matrices["general"][0][0] == res.matrices["general"][0][1]
    )
    assert res.metrics["untrained_general"] == res.baselines["general"][0]
    assert res.metrics["general_change"] == pytest.approx(
        res.metrics["final_general"] - res.metrics["untrained_general"]
    )


def test_bad_instruct_inputs_fail_before_training(tmp_path: Path, tok_dir: str) -> None:
    root = write_benchmark(tmp_path / "CL_Benchmark", n_train=16, n_test=8)
    with pytest.raises(ConfigError, match=r"train\.epochs must be a whole number"):
        run(_config(root, tok_dir, train={"epochs": 1.5}), tmp_path / "a")
    general = {"tasks": ["no_such_task_xyz"], "include_defaults": False}
    with pytest.raises(ValueError, match="no_such_task_xyz"):
        run(_config(root, tok_dir, instruct={"general": general}), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"instruct\.humaneval: HumanEvalConfig\.limit"):
        _config(root, tok_dir, instruct={"humaneval": {"limit": 0}})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_the_cpu_demo_runs_end_to_end(tmp_path: Path) -> None:
    """configs/cpu/sft_demo.yaml on the real CL_Benchmark: SFT, HumanEval in the sandbox, a local
    lm-eval task, and the learning-vs-forgetting plot (the tiny random model's numbers mean nothing)."""
    from support.data import REAL_ROOT

    from migu.analysis.instruct import analyze_instruct
    from migu.runner.config import load_config

    if REAL_ROOT is None:
        pytest.skip("real CL_Benchmark not found")
    cfg = load_config(
        Path(__file__).resolve().parents[3] / "configs/cpu/sft_demo.yaml",
        ["train.epochs=1", "instruct.humaneval.limit=1", "instruct.general.limit=4"],
    )
    res = run(cfg, tmp_path / "run", data_root=REAL_ROOT)
    assert res.complete and res.stages == ["demo_agnews", "demo_sst2", "demo_code"]
    assert res.columns["score"] == ["demo_agnews", "demo_sst2", "demo_code"]
    assert res.metrics["final_general"] is not None and "acc" in res.metrics
    out = analyze_instruct([tmp_path / "run"], tmp_path / "plot")
    assert (tmp_path / "plot/learning_forgetting.png").stat().st_size > 0 and len(out.curves) == 1
    saved = json.loads((tmp_path / "run/results.json").read_text())
    assert saved["regime"] == "instruct"


def test_a_set_made_from_a_task_lists_the_tasks_files(tmp_path: Path, tok_dir: str) -> None:
    from migu.data.corpus import file_sha256
    from migu.data.instructions import load_instruction_set
    from migu.runner.regimes import InstructStages

    root = write_benchmark(tmp_path / "CL_Benchmark")
    data = load_instruction_set("demo_agnews", root, seed=3)
    assert data.task_provenance is not None and data.info["task"] == data.task_provenance.to_json()
    stages = InstructStages(_config(root, tok_dir), [data])
    d = root / "TC/agnews"
    assert stages.data_files() == {
        str(d / f): file_sha256(d / f) for f in ("labels.json", "train.json", "test.json")
    }
