"""External evaluators: HumanEval pass@k in a subprocess sandbox, and general-ability scores through
lm-evaluation-harness (``migu.evals.lm_eval_bridge``, imported on its own: it loads lm-eval).

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
