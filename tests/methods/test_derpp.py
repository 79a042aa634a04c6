"""DER++: reservoir sampling (uniform inclusion), rows and logits stored at insertion, the loss
against a by-hand reference, per-example answer logits of the generative families, state round trip."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load, save
from support.examples import LABEL_SPACE

from migu import MIGUConfig, attach
from migu.data.cl_benchmark import Example
from migu.engine import num_masked
from migu.methods import DERPP, LoRADERPP, StepContext, TaskContext, get_method
from migu.methods.derpp import reservoir_slot, split_logits
from migu.models import ModelFamily

Families = Callable[..., ModelFamily]  # the make_family fixture
Contexts = Callable[..., TaskContext]  # the family_ctx fixture


def test_reservoir_fills_then_keeps_each_row_with_probability_size_over_seen() -> None:
    size, stream, trials = 5, 20, 2000
    assert [reservoir_slot(n, size, seed=0) for n in range(size)] == list(range(size))
    kept = [0] * stream
    for seed in range(trials):
        buffer: list[int] = []
        for n in range(stream):
            slot = reservoir_slot(n, size, seed)
            if slot == len(buffer):
                buffer.append(n)
            elif slot >= 0:
                buffer[slot] = n
        assert len(buffer) == size
        for n in buffer:
            kept[n] += 1
    # Algorithm R: after `stream` rows every row is in the buffer with probability size / stream
    for n in range(stream):
        assert kept[n] / trials == pytest.approx(size / stream, abs=0.04), n
    assert reservoir_slot(10, 5, 1) == reservoir_slot(10, 5, 1)


def feed(method: DERPP, ctx: TaskContext, family: ModelFamily, part: list[Any]) -> dict[str, torch.Tensor]:
    batch = family.collate(part)
    out = family.forward(ctx.model, batch)
    return method.step_loss(StepContext(ctx, ctx.model, batch, out, 0))


def test_rows_enter_with_their_logits_at_insertion(
    make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    fam = make_family("bert")
    method = DERPP(buffer_size=3)
    ctx = family_ctx(fam, 0, rows)
    method.on_task_start(ctx)
    order = [rows[5], rows[2], rows[7], rows[0]]  # a shuffled batch, as the runner's loader gives
    with torch.no_grad():
        want = fam.forward(fam.model, fam.collate(order)).logits  # [4, 5], -inf off-option
    terms = feed(method, ctx, fam, order)
    assert float(terms["der_mse"]) == 0.0 and float(terms["der_ce"]) == 0.0  # empty before the batch
    assert method.seen == 4 and len(method.buffer) == 3
    slot_of_4th = reservoir_slot(3, 3, method.seed)
    expected = order[:3]
    if slot_of_4th >= 0:
        expected[slot_of_4th] = order[3]
    assert method.buffer == expected
    for j, row in enumerate(expected):
        torch.testing.assert_close(method._logits[j], want[order.index(row)].unsqueeze(0), rtol=0, atol=0)


def test_loss_terms_match_a_reference_on_the_same_draws(
    make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    fam = make_family("bert")
    method = DERPP(buffer_size=6, alpha=0.3, beta=0.7, minibatch=3)
    method.on_run_start(5)
    ctx = family_ctx(fam, 0, rows)
    method.on_task_start(ctx)
    feed(method, ctx, fam, rows[:4])
    feed(method, ctx, fam, rows[4:])
    with torch.no_grad():  # the model moves: stored logits are now stale targets
        for p in fam.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    buffer, stored = method.buffer, [z.clone() for z in method._logits]
    call = method._calls
    mse_slots = random.Random(f"5:derpp:mse:0:{call}").sample(range(len(buffer)), 3)
    ce_slots = random.Random(f"5:derpp:ce:0:{call}").sample(range(len(buffer)), 3)
    with torch.no_grad():
        new = fam.forward(fam.model, fam.collate([buffer[j] for j in mse_slots])).logits
        old = torch.cat([stored[j] for j in mse_slots])
        keep = torch.isfinite(old)
        mse = float(((new[keep] - old[keep]) ** 2).mean())
        ce_batch = fam.collate([buffer[j] for j in ce_slots])
        logits = fam.forward(fam.model, ce_batch).logits
        ce = float(F.cross_entropy(logits, ce_batch["labels"]))
    terms = feed(method, ctx, fam, rows[:2])
    assert mse > 0
    assert float(terms["der_mse"].detach()) == pytest.approx(0.3 * mse, rel=1e-5)
    assert float(terms["der_ce"].detach()) == pytest.approx(0.7 * ce, rel=1e-5)
    (terms["der_mse"] + terms["der_ce"]).backward()
    assert all(torch.isfinite(p.grad).all() for p in fam.model.parameters() if p.grad is not None)


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_generative_answer_logits_are_split_per_example(
    kind: str, make_family: Families, rows: list[Any]
) -> None:
    fam = make_family(kind, label_space=(*LABEL_SPACE, "Science"))
    science = dataclasses.replace(rows[4], label="Science", options=(*rows[4].options, "Science"))
    part = [rows[0], science, rows[6]]  # "Science" is spelled in word pieces: a longer answer
    batch = fam.collate(part)
    with torch.no_grad():
        pieces = split_logits(fam.forward(fam.model, batch).logits, batch)
        for row, piece in zip(part, pieces, strict=True):
            alone = fam.forward(fam.model, fam.collate([row])).logits  # [k, vocab]
            torch.testing.assert_close(piece, alone, rtol=1e-4, atol=1e-4)
    assert len({p.shape[0] for p in pieces}) > 1


def test_generative_buffer_replays(make_family: Families, rows: list[Any], family_ctx: Contexts) -> None:
    fam = make_family("t5")
    method = LoRADERPP(buffer_size=4, minibatch=2)
    method.prepare_model(fam.model, fam.spec)
    ctx = family_ctx(fam, 0, rows)
    method.on_task_start(ctx)
    feed(method, ctx, fam, rows[:3])
    terms = feed(method, ctx, fam, rows[3:6])
    assert float(terms["der_ce"].detach()) > 0 and terms["der_mse"].requires_grad
    assert all(z.shape[1] == fam.model.config.vocab_size for z in method._logits)


def test_state_round_trip_rebuilds_examples_and_logits(
    make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    fam = make_family("bert")
    method = DERPP(buffer_size=5)
    method.on_run_start(3)
    ctx = family_ctx(fam, 0, rows)
    method.on_task_start(ctx)
    feed(method, ctx, fam, rows[:4])
    feed(method, ctx, fam, rows[4:])
    method.on_task_end(ctx)
    state = json.loads(json.dumps(method.state_dict()))
    tensors = load(save(method.state_tensors()))
    assert tensors["derpp.logits"].shape == (5, 5) and tensors["derpp.offsets"].tolist() == list(range(6))

    fresh = DERPP(buffer_size=5)
    fresh.on_run_start(3)
    rebuild = family_ctx(fam, 0, rows, rebuilding=True)
    fresh.on_task_start(rebuild)
    fresh.on_task_end(rebuild)
    fresh.load_state_dict(state, tensors)
    assert fresh.seen == method.seen == 8
    assert all(type(r) is Example for r in fresh.buffer)
    assert [vars(r) for r in fresh.buffer] == [vars(r) for r in method.buffer]  # stand-in Ex -> Example
    for a, b in zip(fresh._logits, method._logits, strict=True):
        assert torch.equal(a, b)
    # the same next step on both: same draws, same terms
    ctx1 = family_ctx(fam, 1, rows)
    method.on_task_start(ctx1)
    fresh.on_task_start(ctx1)
    a, b = feed(method, ctx1, fam, rows[:3]), feed(fresh, ctx1, fam, rows[:3])
    assert float(a["der_mse"].detach()) == float(b["der_mse"].detach())
    assert float(a["der_ce"].detach()) == float(b["der_ce"].detach())


def test_plain_json_rows_are_kept_as_they_are() -> None:
    method = DERPP()
    state = {"derpp": {"seen": 1, "rows": [{"json": {"text": "x"}}]}}
    method.load_state_dict(state, {"derpp.logits": torch.zeros(1, 3), "derpp.offsets": torch.tensor([0, 1])})
    assert method.buffer == [{"text": "x"}]
    with pytest.raises(ValueError, match="no logits"):
        DERPP().load_state_dict(state, {})


def test_a_batch_row_of_another_task_is_an_error(
    make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    fam = make_family("bert")
    method = DERPP()
    ctx = family_ctx(fam, 0, rows[:4])
    method.on_task_start(ctx)
    with pytest.raises(RuntimeError, match="matches none of the task's rows"):
        feed(method, ctx, fam, rows[4:6])


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"buffer_size": 0}, "buffer_size"),
        ({"buffer_size": -5}, "buffer_size"),
        ({"alpha": -0.1}, "alpha"),
        ({"beta": float("nan")}, "beta"),
        ({"minibatch": 0}, "minibatch"),
        ({"buffer_seed": -1}, "buffer_seed"),
        ({"buffer": 10}, "buffer"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], bad: str) -> None:
    for name in ("derpp", "lora_derpp", "DER++"):
        with pytest.raises(ValueError, match=f"'{bad}'"):
            get_method(name, **options)


def test_derpp_needs_old_data() -> None:
    assert DERPP.needs.old_data and LoRADERPP.needs.old_data
    assert get_method("DER++").name == "derpp" and get_method("LoRADER++").name == "lora_derpp"


@pytest.mark.parametrize("cls", [DERPP, LoRADERPP])
def test_composes_with_migu(
    cls: type[DERPP], make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    """MIGU masks the gradient of task loss + both buffer terms (attached after on_task_start)."""
    fam = make_family("bert")
    method = cls(buffer_size=4, minibatch=2)
    model = method.prepare_model(fam.model, fam.spec)
    ctx = family_ctx(fam, 0, rows)
    method.on_task_start(ctx)
    feed(method, ctx, fam, rows[:4])  # fills the buffer
    model.zero_grad(set_to_none=True)
    masker = attach(model, MIGUConfig(threshold=0.5))
    batch = fam.collate(rows[4:6])
    out = fam.forward(model, batch)
    terms = method.step_loss(StepContext(ctx, model, batch, out, 1))
    assert float(terms["der_ce"].detach()) > 0
    (out.loss + sum(terms.values())).backward()
    masks = masker.apply()
    live = [t for t in masker.targets if t.weight.requires_grad]
    assert live and set(masks) == {t.name for t in live}
    assert (cls is LoRADERPP) == all(".lora_" in t.name for t in live)
    for t in live:
        keep = masks[t.name]
        assert int((~keep).sum()) == num_masked(0.5, t.d_out)
        assert torch.count_nonzero(t.weight.grad[~keep]) == 0
    masker.detach()
