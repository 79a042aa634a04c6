"""Issue 17, fuzzing the config reader: any YAML file and any ``key=value`` overrides either load
or fail with ConfigError naming the file, the key or the override; never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from migu.runner.config import ConfigError, RunConfig, load_config

SECTIONS = {
    "data": ["train_n", "test_n", "keep_unlabeled", "eval_split", "per_task"],
    "train": ["epochs", "batch_size", "grad_accum", "lr", "weight_decay", "betas", "schedule", "nonfinite"],
    "model": ["name", "max_length", "eval_mode", "random_init"],
    "method": ["name", "options"],
    "migu": ["threshold", "components", "cluster"],
    "pretrain": ["steps_per_domain", "block_size", "mlm_probability", "end_task"],
    "instruct": ["template", "max_new_tokens", "general"],
}
TOP = ["name", "seed", "order", "tasks", "regime", "eval_baseline", "keep_checkpoints", "base", *SECTIONS]
DOTTED = [*TOP, *(f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys)]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["ft", "lora", "agnews", "order1", "stop", "cosine", "", "1e-4", "[", "{a: 1}"])
    | st.text(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
section = st.sampled_from(sorted(SECTIONS)).flatmap(
    lambda name: st.dictionaries(st.sampled_from(SECTIONS[name]) | st.text(max_size=5), values, max_size=4)
)
mappings = st.dictionaries(st.sampled_from(TOP) | st.text(max_size=6), values | section, max_size=6)
overrides = st.lists(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(DOTTED) | st.text(max_size=6), st.text(max_size=10))
    | st.text(max_size=12),
    max_size=3,
)
documents = mappings.map(lambda m: yaml.safe_dump(m, allow_unicode=True)) | st.text(max_size=80)


def _names(msg: str, text: str) -> bool:
    """``text`` appears in ``msg`` as is or as its repr (messages quote names with !r)."""
    return text in msg or repr(text)[1:-1] in msg


def _check(text: str, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            cfg = load_config(path, extra)
        except ConfigError as exc:
            msg = str(exc)
            keys = [o.split("=", 1)[0] for o in extra]
            named = "fuzz.yaml" in msg or any(_names(msg, t) for t in [*extra, *keys])
            assert named, f"{msg!r} names neither the file nor an override ({extra})"
            return
        assert isinstance(cfg, RunConfig)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, overrides)
@example("tasks: [agnews]\n1: 2\n", [])  # a non-string key beside string ones
@example('tasks: [agnews]\nbase: "a\\0b"\n', [])  # a NUL in an include path
@example("tasks: [agnews]\ntrain: {lr: .nan}\n", [])
@example("tasks: [agnews]\n", ["train.lr=.inf"])
@example("tasks: [agnews]\n", ["=1", "a..b=2", "tasks.x=1"])
@example("tasks: !!python/object:os.system [ls]\n", [])
@example("[" * 200, [])
def test_any_config_loads_or_fails_with_a_config_error(text: str, extra: list[str]) -> None:
    _check(text, extra)
