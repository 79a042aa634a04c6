"""DAS (Ke et al. 2023) against slow references, and the continual pre-training baselines (DAS, EWC,
DER++) through the runner.

References: unit importance by central finite differences of a float64 loss in which each unit's
gate is applied by scaling that unit's weights (a head's value rows, an FFN unit's row and bias: the
gate scales its output exactly), never through DAS's hooks; the soft-mask factor of every gradient
entry by explicit loops over rows and columns; the contrastive loss by explicit cosines and
log-sum-exps on a weight-scaled copy of the model; ContinualLM's normalization (per-layer
standardization, |tanh|, max over passes) written out.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load, load_file, save
from support.data import write_benchmark, write_das
from support.models import TINY_VOCAB, tiny_config
from torch import nn

from migu.grid.spec import load_sweep
from migu.methods import DAS, DERPP, StepContext, TaskContext, get_method_class, list_methods
from migu.methods.das import original_ids
from migu.models import ModelConfig, build_mlm_family
from migu.models.mlm import MaskedLMFamily
from migu.runner import loop as loop_mod
from migu.runner.config import ConfigError, RunConfig, build_run_config
from migu.runner.execute import run

KINDS = ("head", "intermediate", "output")
DROPOUT = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
SWEEPS = Path(__file__).resolve().parents[2] / "configs" / "sweeps"


# ---------------------------------------------------------------------------- fixtures and helpers
HEADS, HEAD_DIM = 4, 8  # 4 heads, so their normalized importances differ (2 would tie at |tanh(1/sqrt 2)|)


def mlm_family(tokenizer_dir: str, kind: str = "bert", dropout: bool = False) -> MaskedLMFamily:
    """A tiny random masked LM: hidden 32 (4 heads of 8), FFN 48, 2 layers."""
    torch.manual_seed(0)
    init = tiny_config(kind, TINY_VOCAB, num_attention_heads=HEADS, **(DROPOUT if dropout else {}))
    return build_mlm_family(ModelConfig(random_init=init, tokenizer=tokenizer_dir))


def make_blocks(n: int, length: int = 12, seed: int = 0) -> list[dict[str, list[int]]]:
    """Corpus blocks as ``data.corpus.Blocks`` gives them: [CLS] ids [SEP], special flags."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = [2, *torch.randint(5, TINY_VOCAB, (length - 2,), generator=g).tolist(), 3]
        out.append({"input_ids": ids, "special_tokens_mask": [1] + [0] * (length - 2) + [1]})
    return out


def task(fam: MaskedLMFamily, i: int, rows: list[Any], rebuilding: bool = False) -> TaskContext:
    return TaskContext(
        model=fam.model,
        task_index=i,
        task_name=f"domain{i}",
        examples=rows,
        rebuilding=rebuilding,
        forward=fam.forward,
        collate=fam.collate,
        batch_size=4,
        n_tasks=3,
    )


def layers(fam: MaskedLMFamily) -> list[nn.Module]:
    return list(fam.model.encoder.encoder.layer)


def unit_weights(layer: nn.Module, kind: str, u: int) -> list[tuple[torch.Tensor, Any]]:
    """The parameter slices whose scaling by s scales unit u's gated output by s."""
    if kind == "head":
        d = layer.attention.self.attention_head_size
        rows = slice(u * d, (u + 1) * d)
        value = layer.attention.self.value
        return [(value.weight, rows), (value.bias, rows)]
    lin = layer.intermediate.dense if kind == "intermediate" else layer.output.dense
    return [(lin.weight, u), (lin.bias, u)]


@contextmanager
def scaled(pairs: list[tuple[torch.Tensor, Any]], s: float | torch.Tensor) -> Iterator[None]:
    saved = [p[idx].clone() for p, idx in pairs]
    with torch.no_grad():
        for p, idx in pairs:
            p[idx] *= s
    try:
        yield
    finally:
        with torch.no_grad():
            for (p, idx), v in zip(pairs, saved, strict=True):
                p[idx] = v


def backbone_hidden(model: nn.Module, batch: dict[str, torch.Tensor], ids: torch.Tensor | None = None):
    return model.encoder(
        input_ids=batch["input_ids"] if ids is None else ids, attention_mask=batch["attention_mask"]
    ).last_hidden_state


def ref_mlm(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The MLM loss in float64 from the encoder and head (the family's forward casts logits to fp32)."""
    hidden = backbone_hidden(model, batch)
    picked = batch["labels"] != -100
    logits = getattr(model, model.head_name)(hidden[picked])
    return F.cross_entropy(logits, batch["labels"][picked])


def ref_kl(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """ContinualLM's DistillKL(T=1) of two dropout passes, softmax over positions (no padding here)."""
    h1, h2 = backbone_hidden(model, batch), backbone_hidden(model, batch)
    p1 = h1.softmax(1)
    return (p1 * (h1.log_softmax(1) - h2.log_softmax(1))).sum() / h1.shape[0]


def fd_importance(
    fam: MaskedLMFamily, batches: list[tuple[dict[str, torch.Tensor], int]], loss: Callable[..., Any]
) -> dict[str, torch.Tensor]:
    """sum_B |dL_B/dg| / tokens by central differences, every unit of every layer, float64."""
    model, eps = fam.model, 1e-4
    shapes = {"head": HEADS, "intermediate": 48, "output": 32}
    out = {k: torch.zeros(len(layers(fam)), n, dtype=torch.float64) for k, n in shapes.items()}
    tokens = 0.0
    with torch.no_grad():
        for batch, seed in batches:
            tokens += float(batch["attention_mask"].sum())
            for li, layer in enumerate(layers(fam)):
                for kind, n in shapes.items():
                    for u in range(n):
                        vals = []
                        for s in (1 + eps, 1 - eps):
                            with scaled(unit_weights(layer, kind, u), s):
                                torch.manual_seed(seed)  # the same dropout masks at both points
                                vals.append(float(loss(model, batch)))
                        out[kind][li, u] += abs(vals[0] - vals[1]) / (2 * eps)
    return {k: v / tokens for k, v in out.items()}


def hand_normalize(raw: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(raw, dtype=torch.float64)
    for li in range(raw.shape[0]):
        row = [float(x) for x in raw[li]]
        mean = sum(row) / len(row)
        std = math.sqrt(sum((x - mean) ** 2 for x in row) / (len(row) - 1))  # torch.std: unbiased
        for u, x in enumerate(row):
            out[li, u] = abs(math.tanh((x - mean) / std))
    return out


def random_passes(n_passes: int = 2, seed: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    names = ["general"] + [f"after{i}" for i in range(n_passes - 1)]
    shapes = {"head": (2, HEADS), "intermediate": (2, 48), "output": (2, 32)}
    return {n: {k: torch.rand(s, generator=g) for k, s in shapes.items()} for n in names}


def loaded_das(passes: dict[str, dict[str, torch.Tensor]], **options: Any) -> DAS:
    das = DAS(**options)
    das.on_run_start(3)
    tensors = {f"das.{n}.{k}": t for n, p in passes.items() for k, t in p.items()}
    das.load_state_dict({"das": {"passes": list(passes), "units": list(das.units)}}, tensors)
    return das


# ---------------------------------------------------------------------------- importance
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_mlm_importance_equals_finite_differences_of_unit_gates(tokenizer_dir: str, kind: str) -> None:
    fam = mlm_family(tokenizer_dir, kind)
    fam.model.double()
    rows = make_blocks(8)
    das = DAS(general_importance=False, importance_samples=8, importance_batch_size=4)
    das.on_run_start(3)
    ctx = task(fam, 0, rows)
    das.on_task_start(ctx)
    assert das.passes == {}
    raw = das.compute_pass(ctx, "after")
    batches = list(das.importance_batches(ctx, "after"))  # the same seeded masking
    assert len(batches) == 2
    ref = fd_importance(fam, batches, ref_mlm)
    for k in KINDS:
        scale = float(ref[k].abs().max())
        assert scale > 0
        torch.testing.assert_close(raw[k].double(), ref[k], rtol=1e-4, atol=1e-5 * scale)
    assert list(das.passes) == ["after0"]


def test_general_importance_is_the_proxy_kl_of_two_dropout_passes(tokenizer_dir: str) -> None:
    fam = mlm_family(tokenizer_dir, "bert", dropout=True)
    fam.model.double()
    rows = make_blocks(8, seed=4)
    das = DAS(importance_samples=8, importance_batch_size=4)
    das.on_run_start(11)
    ctx = task(fam, 0, rows)
    fam.model.eval()
    das.on_task_start(ctx)  # task 0: the general pass, in train mode (dropout on), mode restored after
    assert not fam.model.training and list(das.passes) == ["general"]
    raw = das.passes["general"]
    fam.model.train()
    ref = fd_importance(fam, list(das.importance_batches(ctx, "general")), ref_kl)
    for k in KINDS:
        scale = float(ref[k].abs().max())
        assert scale > 0
        torch.testing.assert_close(raw[k].double(), ref[k], rtol=1e-3, atol=1e-4 * scale)
    # the accumulated importance this domain trains with: ContinualLM's normalization of that pass
    for k in KINDS:
        torch.testing.assert_close(das._importance[k].double(), hand_normalize(raw[k]), rtol=0, atol=1e-6)


def test_importance_passes_leave_weights_grads_and_the_random_stream_alone(tokenizer_dir: str) -> None:
    fam = mlm_family(tokenizer_dir, dropout=True)
    das = DAS(importance_samples=8, importance_batch_size=4)
    das.on_run_start(0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    das.on_task_start(task(fam, 0, make_blocks(8)))
    das.on_task_end(task(fam, 0, make_blocks(8)))
    assert torch.equal(torch.rand(3), expected)  # the runner's stream did not move
    assert all(p.grad is None for p in fam.model.parameters())
    assert list(das.passes) == ["general", "after0"]
    again = DAS(importance_samples=8, importance_batch_size=4)
    again.on_run_start(0)
    again.on_task_start(task(fam, 0, make_blocks(8)))
    for k in KINDS:
        assert torch.equal(again.passes["general"][k], das.passes["general"][k])  # seeded: reproducible


def test_accumulated_importance_is_the_max_of_normalized_passes() -> None:
    passes = random_passes(3)
    das = loaded_das(passes)
    acc = das.accumulated()
    for k in KINDS:
        hand = torch.stack([hand_normalize(p[k]) for p in passes.values()]).amax(0)
        torch.testing.assert_close(acc[k].double(), hand, rtol=0, atol=1e-6)
        assert float(acc[k].min()) >= 0 and float(acc[k].max()) < 1
    flat = DAS()
    constant = {
        "head": torch.ones(2, HEADS),
        "intermediate": torch.zeros(2, 48),
        "output": torch.full((2, 32), 0.5),
    }
    flat.load_state_dict(
        {"das": {"passes": ["general"], "units": list(KINDS)}},
        {f"das.general.{k}": v for k, v in constant.items()},
    )
    assert all(float(v.abs().max()) == 0 for v in flat.accumulated().values())  # std 0: nothing protected


# ---------------------------------------------------------------------------- soft-masking
def expected_grad(name: str, g: torch.Tensor, imp: dict[str, torch.Tensor], layout: str) -> torch.Tensor:
    """Each entry of a gradient times its unit's (1 - importance), by explicit loops."""
    out = g.clone()
    parts = name.split(".")
    if "layer" not in parts:
        return out  # embeddings, the MLM head: never masked
    li = int(parts[parts.index("layer") + 1])
    d, is_weight = HEAD_DIM, name.endswith("weight")
    if ".attention.self." in name:
        if is_weight and layout == "continuallm":
            for c in range(g.shape[1]):
                out[:, c] = g[:, c] * (1 - imp["head"][li, c // d])
        else:
            for r in range(g.shape[0]):
                out[r] = g[r] * (1 - imp["head"][li, r // d])
    elif ".attention.output.dense." in name:
        if is_weight:
            for c in range(g.shape[1]):
                out[:, c] = g[:, c] * (1 - imp["head"][li, c // d])
        elif layout == "continuallm":
            for r in range(g.shape[0]):
                out[r] = g[r] * (1 - imp["head"][li, r // d])
    elif ".intermediate.dense." in name or (".output.dense." in name and ".attention." not in name):
        kind = "intermediate" if ".intermediate." in name else "output"
        for r in range(g.shape[0]):
            out[r] = g[r] * (1 - imp[kind][li, r])
    return out


@pytest.mark.parametrize("layout", ["units", "continuallm"])
def test_soft_mask_scales_each_units_gradient_entries(tokenizer_dir: str, layout: str) -> None:
    fam = mlm_family(tokenizer_dir)
    das = loaded_das(random_passes(2), head_grad_layout=layout)
    ctx = task(fam, 1, make_blocks(4))
    das.on_task_start(ctx)  # task 1: no data pass, the accumulated importance of the loaded passes
    imp = {k: v.double() for k, v in das.accumulated().items()}
    g = torch.Generator().manual_seed(5)
    grads = {}
    for n, p in fam.model.named_parameters():
        p.grad = torch.randn(p.shape, generator=g)
        grads[n] = p.grad.clone()
    das.before_optimizer_step(ctx)
    changed = 0
    for n, p in fam.model.named_parameters():
        want = expected_grad(n, grads[n].double(), imp, layout).float()
        torch.testing.assert_close(p.grad, want, rtol=1e-6, atol=1e-7, msg=n)
        changed += not torch.equal(p.grad, grads[n])
    per_layer = 3 * 2 + 1 + (1 if layout == "continuallm" else 0) + 2 * 2  # Q/K/V, O w (+b), FFN w+b
    assert changed == 2 * per_layer


def test_soft_mask_composes_with_a_migu_mask(tokenizer_dir: str) -> None:
    """Zeroed rows stay zero, kept ones are scaled: MIGU's mask and DAS's scaling commute."""
    fam = mlm_family(tokenizer_dir)
    das = loaded_das(random_passes(1))
    ctx = task(fam, 1, make_blocks(4))
    das.on_task_start(ctx)
    lin = layers(fam)[0].intermediate.dense
    lin.weight.grad = torch.randn_like(lin.weight)
    lin.weight.grad[::2] = 0  # rows MIGU dropped
    before = lin.weight.grad.clone()
    das.before_optimizer_step(ctx)
    assert torch.equal(lin.weight.grad[::2], before[::2])
    keep = 1 - das.accumulated()["intermediate"][0]
    torch.testing.assert_close(lin.weight.grad[1::2], before[1::2] * keep[1::2, None])


# ---------------------------------------------------------------------------- contrastive term
def test_contrastive_term_equals_a_hand_computation(tokenizer_dir: str) -> None:
    fam = mlm_family(tokenizer_dir, dropout=True)
    fam.model.double()
    rows = make_blocks(3, seed=7)
    das = loaded_das(random_passes(2), contrast_weight=0.7)
    ctx = task(fam, 1, rows)
    das.on_task_start(ctx)
    torch.manual_seed(1)
    batch = fam.collate(rows)
    ori = torch.tensor([r["input_ids"] for r in rows])
    assert torch.equal(original_ids(batch), ori) and not torch.equal(batch["input_ids"], ori)
    out = fam.forward(fam.model, batch)
    torch.manual_seed(9)
    term = das.step_loss(StepContext(ctx, fam.model, batch, out, 0))["das_contrast"]
    assert term.requires_grad

    # reference: the same dropout draws, gates applied to a weight-scaled copy of the model
    imp = das.accumulated()
    gated = copy.deepcopy(fam.model)
    with torch.no_grad():
        for li, layer in enumerate(gated.encoder.encoder.layer):
            for kind in KINDS:
                for u in range(imp[kind].shape[1]):
                    for p, idx in unit_weights(layer, kind, u):
                        p[idx] *= float(imp[kind][li, u])
        torch.manual_seed(9)
        h_full = fam.model.encoder(
            input_ids=ori.repeat(2, 1), attention_mask=batch["attention_mask"].repeat(2, 1)
        ).last_hidden_state
        h_prev = backbone_hidden(gated, batch, ori)
    n = len(rows)
    z1, z2, z3 = h_full[:n].mean(1), h_full[n:].mean(1), h_prev.mean(1)  # [3, H] each, no padding

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a * b).sum() / (a.norm() * b.norm()))

    total = 0.0
    for i in range(n):
        logits = [cos(z2[i], z1[j]) / 0.05 for j in range(n)] + [cos(z2[i], z3[j]) / 0.05 for j in range(n)]
        top = max(logits)
        total += -logits[i] + top + math.log(sum(math.exp(v - top) for v in logits))
    assert float(term.detach()) == pytest.approx(0.7 * total / n, rel=1e-5)
    assert not torch.allclose(z1, z2)  # two dropout views: the pairing is row i with row B+i


def test_no_importance_no_contrast_no_mask(tokenizer_dir: str) -> None:
    fam = mlm_family(tokenizer_dir)
    das = DAS(general_importance=False)
    ctx = task(fam, 0, make_blocks(4))
    das.on_task_start(ctx)
    batch = fam.collate(make_blocks(4))
    out = fam.forward(fam.model, batch)
    assert float(das.step_loss(StepContext(ctx, fam.model, batch, out, 0))["das_contrast"]) == 0.0
    out.loss.backward()
    before = {n: p.grad.clone() for n, p in fam.model.named_parameters() if p.grad is not None}
    das.before_optimizer_step(ctx)
    assert all(torch.equal(p.grad, before[n]) for n, p in fam.model.named_parameters() if p.grad is not None)


# ---------------------------------------------------------------------------- state
def test_state_round_trip_restores_the_importance_exactly(tokenizer_dir: str) -> None:
    fam = mlm_family(tokenizer_dir, dropout=True)
    rows = make_blocks(8)
    das = DAS(importance_samples=8, importance_batch_size=4)
    das.on_run_start(2)
    das.on_task_start(task(fam, 0, rows))
    das.on_task_end(task(fam, 0, rows))
    state = json.loads(json.dumps(das.state_dict()))
    tensors = load(save(das.state_tensors()))
    assert state["das"]["passes"] == ["general", "after0"]
    assert set(tensors) == {f"das.{n}.{k}" for n in ("general", "after0") for k in KINDS}

    fresh = DAS(importance_samples=8, importance_batch_size=4)
    fresh.on_run_start(2)
    rebuild = TaskContext(model=fam.model, task_index=0, task_name="domain0", rebuilding=True)  # no data
    fresh.on_task_start(rebuild)
    fresh.on_task_end(rebuild)
    assert fresh.passes == {}
    fresh.load_state_dict(state, tensors)
    for n, p in das.passes.items():
        assert all(torch.equal(fresh.passes[n][k], p[k]) for k in KINDS)
    # the next domain trains identically: same gates, same term, same masked gradients
    ctx = task(fam, 1, rows)
    das.on_task_start(ctx)
    fresh.on_task_start(ctx)
    fam.model.eval()  # no dropout: the two terms are comparable
    batch = fam.collate(rows[:4])
    out = fam.forward(fam.model, batch)
    a = das.step_loss(StepContext(ctx, fam.model, batch, out, 0))["das_contrast"]
    b = fresh.step_loss(StepContext(ctx, fam.model, batch, out, 0))["das_contrast"]
    assert float(a.detach()) == float(b.detach()) > 0
    assert all(torch.equal(das._importance[k], fresh._importance[k]) for k in KINDS)

    with pytest.raises(ValueError, match="checkpoint has importance of units"):
        DAS(units=["head"]).load_state_dict(state, tensors)
    with pytest.raises(ValueError, match="lacks the importance"):
        DAS().load_state_dict(state, {})


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"contrast_weight": -1}, "contrast_weight"),
        ({"temperature": 0}, "temperature"),
        ({"importance_samples": 0}, "importance_samples"),
        ({"importance_batch_size": 0}, "importance_batch_size"),
        ({"units": []}, "units"),
        ({"units": ["heads"]}, "units"),
        ({"units": ["head", "head"]}, "units"),
        ({"head_grad_layout": "rows"}, "head_grad_layout"),
        ({"mlm_importance_input": "raw"}, "mlm_importance_input"),
        ({"signed_importance": 1}, "signed_importance"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        DAS(**options)


def test_facts_and_options() -> None:
    das = DAS(units="intermediate")
    assert das.units == ("intermediate",) and das.options["units"] == ["intermediate"]
    assert DAS.regimes == ("pretrain",) and not DAS.needs.old_data and DAS.needs.task_boundaries
    assert DAS().options["importance_samples"] == 10000 and DAS().options["temperature"] == 0.05
    assert {"ft", "ewc", "derpp", "das"} <= set(list_methods("pretrain"))
    assert "das" not in list_methods("finetune") and "lora_derpp" not in list_methods("pretrain")


# ---------------------------------------------------------------------------- DER++ on masked LM
def test_derpp_stores_masked_rows_with_hidden_states_and_replays_them(tokenizer_dir: str) -> None:
    fam = mlm_family(tokenizer_dir)
    rows = make_blocks(8)
    method = DERPP(buffer_size=6, alpha=0.3, beta=0.7, minibatch=3)
    method.on_run_start(5)
    ctx = task(fam, 0, rows)
    method.on_task_start(ctx)

    def feed(part: list[Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        batch = fam.collate(part)
        out = fam.forward(fam.model, batch)
        return batch, method.step_loss(StepContext(ctx, fam.model, batch, out, 0))

    first, terms = feed(rows[:4])
    assert float(terms["der_mse"]) == 0.0 and len(method.buffer) == 4
    with torch.no_grad():
        hidden = backbone_hidden(fam.model, first)  # [4, 12, 32]
    for j, row in enumerate(method.buffer):  # stored as masked, not re-collated
        assert (
            row["input_ids"] == first["input_ids"][j].tolist()
            and row["labels"] == first["labels"][j].tolist()
        )
        torch.testing.assert_close(method._logits[j], hidden[j], rtol=1e-5, atol=1e-6)
    feed(rows[4:])
    with torch.no_grad():
        for p in fam.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    buffer, stored, call = method.buffer, [z.clone() for z in method._logits], method._calls
    mse_slots = random.Random(f"5:derpp:mse:0:{call}").sample(range(len(buffer)), 3)
    ce_slots = random.Random(f"5:derpp:ce:0:{call}").sample(range(len(buffer)), 3)
    with torch.no_grad():
        stack = {k: torch.tensor([buffer[j][k] for j in mse_slots]) for k in ("input_ids", "attention_mask")}
        mse = float(
            ((backbone_hidden(fam.model, stack) - torch.stack([stored[j] for j in mse_slots])) ** 2).mean()
        )
        ce_batch = {
            k: torch.tensor([buffer[j][k] for j in ce_slots])
            for k in ("input_ids", "attention_mask", "labels")
        }
        ce = float(fam.forward(fam.model, ce_batch).loss)
    _, terms = feed(rows[:2])
    assert float(terms["der_mse"].detach()) == pytest.approx(0.3 * mse, rel=1e-5)
    assert float(terms["der_ce"].detach()) == pytest.approx(0.7 * ce, rel=1e-5)
    method.on_task_end(ctx)
    assert not fam.model.encoder._forward_hooks  # the hook is gone before the end tasks copy the encoder


# ---------------------------------------------------------------------------- through the runner
def pretrain_config(
    root: Path, tok: str, cache: Path, method: dict[str, Any], migu: bool = True
) -> RunConfig:
    """tests/runner/test_pretrain.py's tiny run, with dropout (DAS's proxy KL needs it), scored once."""
    return build_run_config(
        {
            "name": "tiny_pretrain",
            "seed": 5,
            "tasks": ["restaurant", "acl"],
            "data_root": str(root),
            "model": {
                "name": "minilm",
                "random_init": tiny_config("bert", TINY_VOCAB, **DROPOUT),
                "tokenizer": tok,
            },
            "method": method,
            "migu": {"threshold": 0.5} if migu else None,
            "train": {"batch_size": 4, "lr": 1e-3, "log_every": 100},
            "eval_baseline": False,
            "pretrain": {
                "steps_per_domain": 3,
                "block_size": 16,
                "cache_dir": str(cache),
                "evaluate": "last",
                "end_task": {"batch_size": 4, "epochs": 1, "lr": 1e-3, "max_length": 24, "max_steps": 2},
            },
        }
    )


def final_checkpoint(out: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    d = out / "checkpoints" / "task_01"
    tensors = d / "method_state.safetensors"
    return (
        load_file(str(d / "model.safetensors")),
        json.loads((d / "method_state.json").read_text()),
        load_file(str(tensors)) if tensors.is_file() else {},
    )


def same_tensors(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


PRETRAIN_CASES = {
    "das": ({"name": "das", "options": {"importance_batch_size": 16}}, {"das_contrast"}),
    "ewc": ({"name": "ewc", "options": {"fisher_batch_size": 4}}, {"ewc"}),
    "derpp": ({"name": "derpp", "options": {"buffer_size": 6}}, {"der_mse", "der_ce"}),
}


@pytest.mark.parametrize("case", list(PRETRAIN_CASES))
def test_pretrain_baseline_resumes_mid_domain_to_the_same_run(
    case: str, tmp_path: Path, tokenizer_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    method, terms = PRETRAIN_CASES[case]
    root = write_das(tmp_path / "das")
    cfg = pretrain_config(root, tokenizer_dir, tmp_path / "cache", method)
    full = run(cfg, tmp_path / "full")
    assert full.complete and full.regime == "pretrain" and None not in full.matrices["mf1"][-1]
    assert set(full.timings[1]["loss_terms"]) == terms and all(
        v > 0 for v in full.timings[1]["loss_terms"].values()
    )

    real_train = loop_mod.train_task

    def crash_in_domain_2(*args: Any, **kwargs: Any) -> Any:
        if args[1].task_name == "acl":
            raise KeyboardInterrupt("killed in the MLM stage of domain 2")
        return real_train(*args, **kwargs)

    monkeypatch.setattr("migu.runner.execute.train_task", crash_in_domain_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "resumed")
    monkeypatch.setattr("migu.runner.execute.train_task", real_train)
    resumed = run(cfg, tmp_path / "resumed")
    assert resumed.matrices == full.matrices
    assert resumed.timings[1]["final_loss"] == full.timings[1]["final_loss"]
    assert resumed.timings[1]["loss_terms"] == full.timings[1]["loss_terms"]
    weights, state, tensors = final_checkpoint(tmp_path / "full")
    weights2, state2, tensors2 = final_checkpoint(tmp_path / "resumed")
    assert same_tensors(weights, weights2) and state == state2 and same_tensors(tensors, tensors2)
    if case == "das":
        assert state["das"]["passes"] == ["general", "after0"]  # the last domain's is not needed


@pytest.mark.slow
def test_a_das_resume_without_the_restored_importance_would_differ(
    tmp_path: Path, tokenizer_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above has teeth: without the importances restored, domain 2 trains otherwise."""
    root = write_das(tmp_path / "das")
    cfg = pretrain_config(root, tokenizer_dir, tmp_path / "cache", PRETRAIN_CASES["das"][0])
    full = run(cfg, tmp_path / "full")
    real_train = loop_mod.train_task

    def crash_in_domain_2(*args: Any, **kwargs: Any) -> Any:
        if args[1].task_name == "acl":
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr("migu.runner.execute.train_task", crash_in_domain_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "resumed")
    monkeypatch.setattr("migu.runner.execute.train_task", real_train)
    monkeypatch.setattr(DAS, "load_state_dict", lambda self, state, tensors=None: None)
    resumed = run(cfg, tmp_path / "resumed")
    assert (
        resumed.timings[1]["loss_terms"]["das_contrast"]
        == 0.0
        < full.timings[1]["loss_terms"]["das_contrast"]
    )
    assert not same_tensors(final_checkpoint(tmp_path / "full")[0], final_checkpoint(tmp_path / "resumed")[0])


def test_das_without_migu_and_with_it_both_run(tmp_path: Path, tokenizer_dir: str) -> None:
    root = write_das(tmp_path / "das")
    res = run(
        pretrain_config(root, tokenizer_dir, tmp_path / "c", {"name": "das"}, migu=False), tmp_path / "run"
    )
    assert res.complete and res.migu is None and res.timings[0]["loss_terms"]["das_contrast"] > 0


def test_das_in_a_finetuning_run_is_refused_before_training(tmp_path: Path, tokenizer_dir: str) -> None:
    bench = write_benchmark(tmp_path / "CL_Benchmark")
    cfg = build_run_config(
        {
            "name": "tiny_ft",
            "tasks": ["agnews", "amazon"],
            "data_root": str(bench),
            "data": {"train_n": 8, "test_n": 4},
            "model": {
                "name": "minilm",
                "random_init": tiny_config("bert", TINY_VOCAB),
                "tokenizer": tokenizer_dir,
            },
            "method": {"name": "das"},
        }
    )
    with pytest.raises(ConfigError, match=r"method 'das' does not run in the finetune regime.*pretrain"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_das_proxy_sweep_expands_to_pretrain_methods() -> None:
    name, cells = load_sweep(SWEEPS / "das_proxy_methods.yaml")
    assert name == "das_proxy_methods" and len(cells) == 5 * 3
    recipes = {(c.config["method"]["name"], repr(c.config["migu"])) for c in cells}
    assert recipes == {("ft", "None"), ("ft", "{}"), ("ewc", "None"), ("derpp", "None"), ("das", "None")}
    assert {c.config["seed"] for c in cells} == {42, 1024, 2048}
    for c in cells:
        assert c.config["order"] == "das_proxy"
        assert "pretrain" in get_method_class(c.config["method"]["name"]).regimes
        cfg = build_run_config(c.config)
        assert cfg.migu is None or cfg.migu.threshold == 0.7
