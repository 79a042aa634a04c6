"""The runner end to end on tiny random models and generated data: files, metrics, resume, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from migu.data import DataError
from migu.engine import Masker
from migu.metrics import summarize
from migu.runner import loop as loop_mod
from migu.runner.config import ConfigError, RunConfig
from migu.runner.execute import run
from migu.runner.results import format_results, load_results
from migu.runner.resume import restore_run


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_run_writes_the_run_directory(tiny_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run(tiny_config(), out)
    for name in ("config.yaml", "results.json", "accuracy_matrix.csv", "run.log", "run_state.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["task_01"]  # older pruned
    assert (out / "checkpoints/task_01/model.safetensors").is_file()
    saved = load_results(out)
    assert saved.tasks == ["agnews", "amazon"] and saved.complete
    assert len(saved.matrix) == 2 and all(len(r) == 2 for r in saved.matrix)
    assert saved.metrics == pytest.approx(summarize(saved.matrix, saved.baseline))
    assert set(saved.per_task) == {"agnews", "amazon"}
    assert saved.per_task["agnews"]["train"]["used"] == 32
    assert {"torch", "transformers", "peft", "accelerate", "migu"} <= set(saved.versions)
    assert saved.versions["cpu"] and saved.versions["cpu_capability"] in {
        "DEFAULT",
        "AVX2",
        "AVX512",
        "ZVECTOR",
        "VSX",
        "SVE256",
    }  # the machine that ran, for reruns
    assert saved.timings[0]["steps"] == 4  # 32 rows / batch 8, one epoch
    csv_lines = (out / "accuracy_matrix.csv").read_text().splitlines()
    assert csv_lines[0] == "after_task,agnews,amazon" and len(csv_lines) == 4  # header, untrained, 2 rows
    assert "ACC" in format_results(res)
    # The tiny model learns the keyword task it was trained on last.
    assert saved.matrix[1][1] > saved.baseline[1]


def test_resume_after_a_crash_matches_an_uninterrupted_run(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(migu={"threshold": 0.5})
    full = run(cfg, tmp_path / "full")

    real_train = loop_mod.train_task

    def crash_on_second_task(*args, **kwargs):
        if args[1].task_index == 1:  # args[1] is the TaskContext: killed in the middle of task 2
            raise KeyboardInterrupt("killed")
        return real_train(*args, **kwargs)

    monkeypatch.setattr("migu.runner.execute.train_task", crash_on_second_task)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "resumed")
    state = json.loads((tmp_path / "resumed/run_state.json").read_text())
    assert state["completed"] == 1 and not (tmp_path / "resumed/results.json").exists()
    monkeypatch.setattr("migu.runner.execute.train_task", real_train)
    resumed = run(cfg, tmp_path / "resumed")
    assert resumed.matrix == full.matrix  # bit-identical on CPU with the same seed
    assert resumed.baseline == full.baseline


def test_keep_checkpoints_and_restore(tiny_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run(tiny_config(keep_checkpoints=True), out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["task_00", "task_01"]
    plan, family, model = restore_run(out, 1)
    preds = family.predict(model, plan.tasks[1].test, batch_size=16)
    acc = sum(p == e.label for p, e in zip(preds, plan.tasks[1].test, strict=True)) / len(preds)
    assert acc == pytest.approx(res.matrix[1][1])


def test_migu_is_applied_once_per_optimizer_step(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real_apply = Masker.apply

    def counting_apply(self: Masker) -> dict:
        calls.append(self.task_index)
        return real_apply(self)

    monkeypatch.setattr(Masker, "apply", counting_apply)
    res = run(tiny_config(migu={}, train={"grad_accum": 2}), tmp_path / "run")
    # 32 rows / batch 8 = 4 micro-batches = 2 optimizer steps per task, one mask each.
    assert calls == [0, 0, 1, 1]
    assert res.migu["threshold"] == pytest.approx(0.7)  # FT's paper default


def test_existing_run_with_another_config_is_refused(
    tiny_config: Callable[..., RunConfig], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run(tiny_config(), out)
    before = _snapshot(out)
    with pytest.raises(ConfigError, match="different config"):
        run(tiny_config(seed=8), out)
    assert _snapshot(out) == before


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda d: (d / "SC/amazon/train.json").write_text('[{"sentence": "x", '), "train.json"),
        (
            lambda d: (d / "SC/amazon/test.json").write_text(json.dumps([{"sentence": "x", "label": "meh"}])),
            "meh",
        ),
        (lambda d: (d / "SC/amazon/test.json").write_text("[]"), "test.json"),
        (lambda d: [p.unlink() for p in (d / "SC/amazon").iterdir()], "amazon"),
    ],
    ids=["malformed-json", "unknown-label", "empty-split", "missing-task"],
)
def test_bad_data_fails_before_training_and_keeps_results(
    tiny_config: Callable[..., RunConfig], bench: Path, tmp_path: Path, corrupt, match: str
) -> None:
    out = tmp_path / "run"
    run(tiny_config(), out)
    before = _snapshot(out)
    corrupt(bench)
    with pytest.raises(DataError, match=match):
        run(tiny_config(), out)
    assert _snapshot(out) == before


def test_unknown_method_and_bad_migu_are_config_errors(
    tiny_config: Callable[..., RunConfig], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="method"):
        run(tiny_config(method={"name": "nope"}), tmp_path / "a")
    with pytest.raises(ConfigError, match="threshold"):
        run(tiny_config(migu={"threshold": 1.5}), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_generative_families_run(tiny_config: Callable[..., RunConfig], tmp_path: Path, kind: str) -> None:
    res = run(tiny_config(kind, migu={"threshold": 0.5}, data={"train_n": 16, "test_n": 8}), tmp_path / kind)
    assert res.complete and len(res.matrix) == 2
    assert all(0.0 <= v <= 1.0 for row in res.matrix for v in row)


METHOD_NAMES = ["ft", "lora", "inclora", "olora", "lora_replay", "ft_replay"]


@pytest.mark.parametrize("migu_on", [False, True], ids=["base", "migu"])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_with_and_without_migu_runs_two_tasks(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, method: str, migu_on: bool
) -> None:
    cfg = tiny_config(
        method={"name": method, "options": {"r": 4} if "lora" in method else {}},
        migu={} if migu_on else None,
        data={"train_n": 16, "test_n": 8},
        eval_baseline=False,
    )
    res = run(cfg, tmp_path / "run")
    assert res.complete and res.method == method and len(res.matrix) == 2
    if migu_on:
        from migu.methods import get_method_class

        assert res.migu["threshold"] == get_method_class(method).default_threshold
    else:
        assert res.migu is None
    if method == "olora":
        assert set(res.timings[1]["loss_terms"]) == {"orth", "l2"}
    if "replay" in method:
        # 2% of 16 rows rounds to 1 replayed row from task 1 during task 2.
        assert res.timings[1]["train_rows"] == 16 + 1


def test_schedules_bf16_autocast_and_tensorboard(
    tiny_config: Callable[..., RunConfig], tmp_path: Path
) -> None:
    cfg = tiny_config(
        train={"schedule": "cosine", "warmup_ratio": 0.25, "mixed_precision": "bf16"},
        tensorboard=True,
        migu={"threshold": 0.5},
        data={"train_n": 16, "test_n": 8},
    )
    # Accelerate keeps one mixed-precision setting per process: run bf16 in a fresh process.
    path = tmp_path / "bf16.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "migu.cli", "run", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = load_results(out)
    assert res.complete and res.config["train"]["mixed_precision"] == "bf16"
    assert list((out / "tb").rglob("events.out.tfevents.*")), "no TensorBoard event file"
