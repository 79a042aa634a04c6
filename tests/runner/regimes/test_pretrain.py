"""Continual pre-training through the runner: MLM stages, end-task protocol, matrices, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.data import write_das
from support.models import TINY_VOCAB, save_tiny_tokenizer, tiny_config

from migu.metrics import diagonal_forgetting, mean_diagonal, mean_last_row
from migu.runner import loop as loop_mod
from migu.runner.config import ConfigError, RunConfig, build_run_config
from migu.runner.execute import run
from migu.runner.regimes import pretrain as stages_mod


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def _config(root: Path, tok_dir: str, cache: Path, **over: Any) -> RunConfig:
    data: dict[str, Any] = {
        "name": "tiny_pretrain",
        "seed": 5,
        "tasks": ["restaurant", "acl"],
        "data_root": str(root),
        "model": {"name": "minilm", "random_init": tiny_config("bert", TINY_VOCAB), "tokenizer": tok_dir},
        "method": {"name": "ft"},
        "migu": {"threshold": 0.5},
        "train": {"batch_size": 4, "lr": 1e-3, "log_every": 100},
        "pretrain": {
            "steps_per_domain": 3,
            "block_size": 16,
            "cache_dir": str(cache),
            "end_task": {"batch_size": 4, "epochs": 1, "lr": 1e-3, "max_length": 24},
        },
    }
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    return build_run_config(data)


def test_progressive_summaries_by_hand() -> None:
    r = [[0.5, None, None], [0.4, 0.6, None], [0.3, 0.5, 0.9]]
    assert mean_last_row(r) == pytest.approx((0.3 + 0.5 + 0.9) / 3)
    assert mean_diagonal(r) == pytest.approx((0.5 + 0.6 + 0.9) / 3)
    assert diagonal_forgetting(r) == pytest.approx(((0.5 - 0.3) + (0.6 - 0.5)) / 2)
    last_only = [[None] * 3, [None] * 3, [0.3, 0.5, 0.9]]
    assert mean_diagonal(last_only) is None and diagonal_forgetting(last_only) is None
    assert mean_last_row(last_only) == pytest.approx(1.7 / 3)


def test_pretrain_run_fills_the_progressive_matrices(tmp_path: Path, tok_dir: str) -> None:
    root = write_das(tmp_path / "das")
    res = run(_config(root, tok_dir, tmp_path / "cache"), tmp_path / "run")
    assert res.complete and res.regime == "pretrain" and res.primary == "mf1"
    assert res.tasks == ["restaurant", "acl"] and res.stages == ["restaurant", "acl"]
    for m in ("mf1", "acc"):
        r = res.matrices[m]
        assert r[0][1] is None and all(v is not None for v in (r[0][0], r[1][0], r[1][1]))  # j <= i only
        assert res.metrics[f"final_{m}"] == pytest.approx(mean_last_row(r))
        assert res.metrics[f"forward_{m}"] == pytest.approx(mean_diagonal(r))
        assert res.metrics[f"forgetting_{m}"] == pytest.approx(diagonal_forgetting(r))
        assert len(res.baselines[m]) == 2  # end tasks finetuned from the unadapted model
    assert res.timings[0]["steps"] == 3  # steps_per_domain
    info = res.per_task["restaurant"]
    assert info["blocks"] > 0 and info["files"][0]["path"].endswith("yelp_restaurant.txt")
    saved = json.loads((tmp_path / "run/results.json").read_text())
    assert saved["matrices"]["mf1"][0][1] is None  # strict JSON null
    # each end task's rows after the last domain, 0/1, for the paired bootstrap; their mean is the ACC
    rows = res.final_correct["test"]
    assert list(rows) == ["restaurant", "acl"] and set(rows["acl"]) <= {0, 1}
    for j, name in enumerate(rows):
        assert sum(rows[name]) / len(rows[name]) == pytest.approx(res.matrices["acc"][1][j])


def test_evaluate_last_scores_after_the_last_domain_only(tmp_path: Path, tok_dir: str) -> None:
    root = write_das(tmp_path / "das")
    cfg = _config(root, tok_dir, tmp_path / "cache", pretrain={"evaluate": "last"}, eval_baseline=False)
    res = run(cfg, tmp_path / "run")
    assert res.matrices["mf1"][0] == [None, None] and None not in res.matrices["mf1"][1]
    assert res.metrics["forward_mf1"] is None and res.metrics["final_mf1"] is not None


def test_resume_mid_domain_and_mid_end_task_gives_the_same_matrices(
    tmp_path: Path, tok_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_das(tmp_path / "das")
    cfg = _config(root, tok_dir, tmp_path / "cache")
    full = run(cfg, tmp_path / "full")

    real_train, real_end = loop_mod.train_task, stages_mod.PretrainStages._end_task

    def crash_in_domain_2(*args: Any, **kwargs: Any) -> Any:
        if args[1].task_name == "acl":
            raise KeyboardInterrupt("killed in the MLM stage of domain 2")
        return real_train(*args, **kwargs)

    monkeypatch.setattr("migu.runner.execute.train_task", crash_in_domain_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "mid_domain")
    monkeypatch.setattr("migu.runner.execute.train_task", real_train)
    assert run(cfg, tmp_path / "mid_domain").matrices == full.matrices

    calls: list[tuple[int, int]] = []

    def crash_in_second_end_task(self: Any, j: int, stage: int, accelerator: Any) -> Any:
        calls.append((stage, j))
        if (stage, j) == (1, 1):
            raise KeyboardInterrupt("killed while finetuning end task 2 after domain 2")
        return real_end(self, j, stage, accelerator)

    monkeypatch.setattr(stages_mod.PretrainStages, "_end_task", crash_in_second_end_task)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "mid_end_task")
    state = json.loads((tmp_path / "mid_end_task/run_state.json").read_text())
    assert state["trained"] == 2 and state["completed"] == 1 and "1:0" in state["progress"]
    monkeypatch.setattr(stages_mod.PretrainStages, "_end_task", real_end)
    calls.clear()
    resumed = run(cfg, tmp_path / "mid_end_task")
    assert resumed.matrices == full.matrices and resumed.baselines == full.baselines
    assert resumed.final_correct == full.final_correct and full.final_correct


def test_a_changed_corpus_is_refused_on_resume(
    tmp_path: Path, tok_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_das(tmp_path / "das")
    cfg = _config(root, tok_dir, tmp_path / "cache")
    real_train = loop_mod.train_task

    def crash(*args: Any, **kwargs: Any) -> Any:
        if args[1].task_name == "acl":
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr("migu.runner.execute.train_task", crash)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run")
    monkeypatch.setattr("migu.runner.execute.train_task", real_train)
    (root / "acl_anthology.txt").write_text("parser corpus\n" * 50)
    before = (tmp_path / "run/run_state.json").read_text()
    with pytest.raises(
        ConfigError, match=r"the data changed since this run started.*acl_anthology\.txt \(sha256"
    ):
        run(cfg, tmp_path / "run")
    assert (tmp_path / "run/run_state.json").read_text() == before  # nothing written


def test_bad_pretrain_inputs_fail_before_training(tmp_path: Path, tok_dir: str) -> None:
    root = write_das(tmp_path / "das")
    with pytest.raises(KeyError, match="unknown order 'order77'"):
        run(_config(root, tok_dir, tmp_path / "c", tasks=None, order="order77"), tmp_path / "a")
    with pytest.raises(ValueError, match=r"domain 'ai': corpus file .*ai_corpus\.txt not found"):
        run(_config(root, tok_dir, tmp_path / "c", tasks=["restaurant", "ai"]), tmp_path / "b")
    with pytest.raises(ConfigError, match="method 'olora' does not run in the pretrain regime"):
        run(_config(root, tok_dir, tmp_path / "c", method={"name": "olora"}), tmp_path / "d")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "d").exists()
    with pytest.raises(ConfigError, match="pretrain: give steps_per_domain or samples_per_domain, not both"):
        _config(root, tok_dir, tmp_path / "c", pretrain={"samples_per_domain": 100})


@pytest.mark.slow
def test_the_cpu_proxy_runs_at_a_tiny_size_on_real_data(tmp_path: Path) -> None:
    """configs/cpu/das_proxy.yaml with MiniLM on the real CL_Benchmark, cut to a few steps."""
    from support.data import REAL_ROOT

    from migu.runner.config import load_config

    if REAL_ROOT is None:
        pytest.skip("real CL_Benchmark not found")
    overrides = [
        "pretrain.steps_per_domain=1",
        "pretrain.end_task.max_steps=1",
        f"pretrain.cache_dir={tmp_path / 'cache'}",
        "eval_baseline=false",
        "pretrain.evaluate=last",
        "migu.threshold=0.7",
    ]
    cfg = load_config(Path(__file__).resolve().parents[3] / "configs/cpu/das_proxy.yaml", overrides)
    res = run(cfg, tmp_path / "run", data_root=REAL_ROOT)
    assert res.complete and res.tasks == ["proxy_reviews", "proxy_news", "proxy_encyclopedia"]
    assert None not in res.matrices["mf1"][-1] and res.metrics["final_acc"] is not None
    carved = res.per_task["proxy_news"]
    assert carved["disjoint_from_end_task"] and carved["used"] == 3000 and carved["blocks"] > 1000


def test_the_untrained_reference_is_reused_only_for_the_same_computation(
    tmp_path: Path, tok_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FT and FT+MIGU of one seed share the untrained reference (the methods act in the MLM stages
    only): the second run reads it from the cache, equal to the first's to the bit, and finetunes no
    reference end task; a different end-task lr, a corrupt record or reuse off computes it again."""
    root = write_das(tmp_path / "das")
    cache = tmp_path / "cache"
    reference_calls: list[str] = []
    real_end = stages_mod.PretrainStages._end_task

    def counting(self: Any, j: int, stage: int, accelerator: Any) -> Any:
        if stage == -1:
            reference_calls.append(self.names[j])
        return real_end(self, j, stage, accelerator)

    monkeypatch.setattr(stages_mod.PretrainStages, "_end_task", counting)
    ft = run(_config(root, tok_dir, cache, migu=None), tmp_path / "ft")
    assert reference_calls == ["restaurant", "acl"]
    records = sorted((cache / "end_task_reference").glob("*.json"))
    assert [p.name.split("-")[0] for p in records] == ["acl", "restaurant"]
    reference_calls.clear()
    migu = run(_config(root, tok_dir, cache), tmp_path / "ft_migu")
    assert reference_calls == [] and migu.baselines == ft.baselines
    state = json.loads((tmp_path / "ft_migu/run_state.json").read_text())
    assert state["progress"]["base:0"]["cached"].endswith(records[1].name)

    fresh = run(_config(root, tok_dir, cache, pretrain={"reuse_reference": False}), tmp_path / "fresh")
    assert reference_calls == ["restaurant", "acl"] and fresh.baselines == ft.baselines  # bitwise
    reference_calls.clear()
    records[0].write_text("{not json")
    run(_config(root, tok_dir, cache, seed=5, migu=None, train={"lr": 2e-3}), tmp_path / "corrupt")
    assert reference_calls == ["acl"]  # the MLM lr is not the end task's: only the broken record
    reference_calls.clear()
    other = {"end_task": {"batch_size": 4, "epochs": 1, "lr": 5e-4, "max_length": 24}}
    run(_config(root, tok_dir, cache, pretrain=other), tmp_path / "other_lr")
    assert reference_calls == ["restaurant", "acl"]


def test_weights_hash_sees_one_changed_bit() -> None:
    import copy

    import torch

    from migu.runner.regimes.reference import weights_sha256

    lin = torch.nn.Linear(4, 3)
    before = weights_sha256(lin)
    assert weights_sha256(lin) == before
    with torch.no_grad():
        lin.weight.view(-1)[5] = torch.nextafter(lin.weight.view(-1)[5], torch.tensor(10.0))
    assert weights_sha256(lin) != before
    assert weights_sha256(copy.deepcopy(lin).to(torch.bfloat16)) != weights_sha256(lin)  # dtype counts


def test_reference_reuse_is_not_part_of_the_config_hash() -> None:
    """Reuse of a cached reference repeats the same computation, so turning it off is no change of
    the run, and a run started before the field existed (finetuning runs carry a pretrain section)
    still resumes; another end-task lr is a change."""
    from migu.runner.state import config_changes, config_hash

    data = build_run_config({"tasks": ["a"]}).to_dict()
    assert data["pretrain"]["reuse_reference"] is True
    before = {**data, "pretrain": {k: v for k, v in data["pretrain"].items() if k != "reuse_reference"}}
    off = build_run_config({"tasks": ["a"], "pretrain": {"reuse_reference": False}}).to_dict()
    assert config_hash(data) == config_hash(before) == config_hash(off)
    assert config_changes(before, data) == []
    other = build_run_config({"tasks": ["a"], "pretrain": {"end_task": {"lr": 1e-4}}}).to_dict()
    assert config_changes(data, other) == ["pretrain.end_task.lr: 3e-05 -> 0.0001"]


def test_config_changes_can_skip_keys_added_since_but_still_reports_removed_ones() -> None:
    """A saved config that predates a field does not differ on it (skip_added); a field the saved
    config has and the current one lacks is still a change."""
    from migu.runner.state import config_changes

    data = build_run_config({"tasks": ["a"], "train": {"lr": 1e-3}}).to_dict()
    older = {**data, "train": {k: v for k, v in data["train"].items() if k != "lr"}}
    assert config_changes(older, data) == ["train.lr: (unset) -> 0.001"]
    assert config_changes(older, data, skip_added=True) == []
    assert config_changes(data, older, skip_added=True) == ["train.lr: 0.001 -> (unset)"]
    other = {**older, "seed": 7}
    assert config_changes(other, data, skip_added=True) == [f"seed: 7 -> {data['seed']}"]


def test_an_unwritable_reference_cache_warns_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from migu.runner.regimes.reference import load_reference, save_reference

    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with caplog.at_level("WARNING"):
        save_reference(
            blocked / "end_task_reference" / "x.json",
            "k",
            dict.fromkeys(("mf1", "acc", "correct", "steps", "seconds"), 0),
        )
    assert "could not cache the untrained reference" in caplog.text
    good = tmp_path / "ok" / "x.json"
    save_reference(
        good, "k", {"mf1": 0.5, "acc": 0.6, "correct": [1, 0], "steps": 3, "seconds": 1.0, "extra": 1}
    )
    assert load_reference(good, "k") == {
        "mf1": 0.5,
        "acc": 0.6,
        "correct": [1, 0],
        "steps": 3,
        "seconds": 1.0,
    }
    assert load_reference(good, "other key") is None
