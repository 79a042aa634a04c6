"""Evaluations of generated code and text (HumanEval pass@k in a subprocess sandbox).

Only standard-library modules are imported here; torch/transformers load inside the functions that
need them.
"""

from .humaneval import (
    HUMAN_EVAL_STOPS,
    HumanEvalConfig,
    HumanEvalProblem,
    HumanEvalResult,
    ProblemResult,
    check_completions,
    estimate_pass_at_k,
    evaluate_humaneval,
    generate_completions,
    load_problems,
    truncate_at_stop,
)
from .sandbox import Sandbox, SandboxConfig, SandboxError, SandboxInfo, SandboxResult

__all__ = [
    "HUMAN_EVAL_STOPS",
    "HumanEvalConfig",
    "HumanEvalProblem",
    "HumanEvalResult",
    "ProblemResult",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxInfo",
    "SandboxResult",
    "check_completions",
    "estimate_pass_at_k",
    "evaluate_humaneval",
    "generate_completions",
    "load_problems",
    "truncate_at_stop",
]
