"""OSF: per-task re-decomposition in place (the merged model keeps what the task learned), the growing
preserved rank, PEFT's unload() vs merge_and_unload(), the MIGU refusal, bad input."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from peft import OSFConfig, get_peft_model
from support.methods import ENCODER_SPEC, T5_SPEC, logits, t5_batch, tiny_encoder, tiny_t5, train_steps
from support.models import build_tiny_model
from torch import nn

from migu.methods import OSF, TaskContext, get_method
from migu.methods import osf as osf_module
from migu.methods.osf import osf_layers, preserved_rank
from migu.models import ModelFamily, ModelSpec
from migu.runner.config import ConfigError, build_run_config

Families = Callable[..., ModelFamily]  # the make_family fixture
Contexts = Callable[..., TaskContext]  # the family_ctx fixture


def ctx(model: nn.Module, i: int, n_tasks: int | None = 3, rebuilding: bool = False) -> TaskContext:
    return TaskContext(model, i, f"task{i}", (), rebuilding=rebuilding, n_tasks=n_tasks)


def sgd(model: nn.Module, batch: dict[str, torch.Tensor], steps: int = 5, lr: float = 0.5) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()


def test_merge_keeps_the_task_and_the_next_task_redecomposes_in_place() -> None:
    model = tiny_t5()
    batch = t5_batch()
    keys = set(model.state_dict())
    method = OSF(preserved=[0.25, 0.5])
    assert method.prepare_model(model, T5_SPEC) is model
    untrained = logits(model, batch)

    method.on_task_start(ctx(model, 0))
    layers = osf_layers(model)
    assert len(layers) == 32  # q k v o (+ cross-attention) and wi wo of every T5 block
    for _, layer in layers:
        assert layer.effective_rank["default"] == preserved_rank(0.25, layer.get_base_layer().weight)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("osf_svd_params" in n for n in trainable)
    train_steps(model, method, 0, batch, steps=4, lr=1e-2)
    trained = logits(model, batch)
    assert not torch.allclose(trained, untrained, atol=1e-3)

    method.on_task_end(ctx(model, 0))
    assert not osf_layers(model) and set(model.state_dict()) == keys  # the plain model again
    torch.testing.assert_close(logits(model, batch), trained, rtol=1e-4, atol=1e-5)  # learning kept

    merged = logits(model, batch)
    method.on_task_start(ctx(model, 1))
    for _, layer in osf_layers(model):
        w = layer.get_base_layer().weight
        assert layer.effective_rank["default"] == math.floor(0.5 * min(w.shape))
    torch.testing.assert_close(logits(model, batch), merged, rtol=1e-4, atol=1e-5)  # identity at init
    method.on_task_end(ctx(model, 1))
    assert method.state_dict() == {"osf": {"fractions": {"0": 0.25, "1": 0.5}}}


def test_the_preserved_subspace_holds_under_sgd_not_under_adam() -> None:
    """OSF projects U_low's and V_low's *gradients*; SGD keeps the update orthogonal to the frozen top
    singular directions, Adam's per-element scaling does not (measured: ~10% of the update leaks)."""

    def leak(optimizer: str) -> float:
        model = tiny_t5()
        batch = t5_batch()
        method = OSF(preserved=[0.5], target_modules=["q"])
        method.prepare_model(model, T5_SPEC)
        w0 = model.get_submodule("encoder.block.0.layer.0.SelfAttention.q").weight.detach().clone()
        method.on_task_start(ctx(model, 0))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.5) if optimizer == "sgd" else torch.optim.AdamW(params, lr=1e-2)
        for _ in range(10):
            opt.zero_grad()
            model(**batch).loss.backward()
            opt.step()
        method.on_task_end(ctx(model, 0))
        delta = model.get_submodule("encoder.block.0.layer.0.SelfAttention.q").weight.detach() - w0
        u = torch.linalg.svd(w0).U
        k = math.floor(0.5 * min(w0.shape))
        assert float(delta.norm()) > 1e-3
        return float((u[:, :k].T @ delta).norm() / delta.norm())

    assert leak("sgd") < 1e-4
    assert leak("adam") > 1e-2


def test_default_schedule_is_i_over_n_and_needs_the_task_count() -> None:
    method = OSF()
    assert [method.preserved_fraction(i, 4) for i in range(4)] == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="number of tasks"):
        method.preserved_fraction(1, None)
    with pytest.raises(ValueError, match="'preserved' has 2 fractions"):
        OSF(preserved=[0.1, 0.2]).preserved_fraction(2, 5)
    w = torch.zeros(8, 24)  # min_dim 8
    assert [preserved_rank(f, w) for f in (0.0, 0.1, 0.5, 0.99)] == [1, 1, 4, 7]


def test_encoder_head_trains_fully_and_is_not_decomposed() -> None:
    model = tiny_encoder()
    method = OSF()
    method.prepare_model(model, ENCODER_SPEC)
    method.on_task_start(ctx(model, 0, n_tasks=2))
    names = {n for n, _ in osf_layers(model)}
    assert names and not any(n.startswith("classifier") for n in names)
    assert "layer.0.attention.query" in names and "layer.1.output.dense" in names
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert "embed.weight" not in trainable


def test_rebuilding_injects_nothing_and_checks_the_schedule() -> None:
    model = tiny_encoder()
    method = OSF()
    method.prepare_model(model, ENCODER_SPEC)
    for i in range(2):
        method.on_task_start(ctx(model, i, n_tasks=4, rebuilding=True))
        assert not osf_layers(model)
        method.on_task_end(ctx(model, i, n_tasks=4, rebuilding=True))
    method.load_state_dict({"osf": {"fractions": {"0": 0.0, "1": 0.25}}})
    with pytest.raises(ValueError, match="preserved fractions"):
        method.load_state_dict({"osf": {"fractions": {"0": 0.0, "1": 0.5}}})


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # PEFT's own call
def test_peft_unload_drops_the_learned_update_merge_and_unload_keeps_it() -> None:
    """PEFT's OSF docs ("Sequential Task Learning") and examples/orthogonal_subspace_learning re-wrap
    ``model.unload()`` between tasks; on PEFT 0.21 that returns the weights as they were *before* the
    task (OSF keeps W and adds the learned delta in the layer's forward), so each task's learning is
    lost. ``merge_and_unload()`` is what continual learning needs."""
    base = tiny_t5()
    batch = t5_batch()
    untrained = logits(base, batch)
    config = OSFConfig(target_modules=["q", "v", "wi", "wo"], effective_rank=2)
    wrapped = get_peft_model(copy.deepcopy(base), config)
    sgd(wrapped, batch)
    trained = logits(wrapped, batch)
    assert not torch.allclose(trained, untrained, atol=1e-2)
    merged_copy = copy.deepcopy(wrapped)
    unloaded = wrapped.unload()
    torch.testing.assert_close(logits(unloaded, batch), untrained, rtol=1e-4, atol=1e-5)  # dropped
    torch.testing.assert_close(logits(merged_copy.merge_and_unload(), batch), trained, rtol=1e-4, atol=1e-5)


def test_migu_is_refused_for_osf(tmp_path: Any) -> None:
    data = {"tasks": ["agnews"], "method": {"name": "osf"}, "migu": {}}
    with pytest.raises(ConfigError, match="does not compose with MIGU"):
        build_run_config(data)
    assert build_run_config({**data, "migu": None}).migu is None
    assert not OSF.migu_compatible and all(
        get_method(n).migu_compatible for n in ("ft", "ewc", "lwf", "derpp", "lora_derpp")
    )


def test_gpt2_conv1d_blocks_cannot_be_targeted() -> None:
    model = build_tiny_model("gpt2", head="causal-lm")
    spec = ModelSpec(lora_target_modules=("c_attn",), task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match=r"only torch\.nn\.Linear.*Conv1D"):
        OSF().prepare_model(model, spec)


def test_osf_runs_on_a_real_family(make_family: Families, rows: list[Any], family_ctx: Contexts) -> None:
    fam = make_family("llama")
    method = get_method("osf")
    method.prepare_model(fam.model, fam.spec)
    c = family_ctx(fam, 0, rows, n_tasks=2)
    method.on_task_start(c)
    assert not any("lm_head" in n for n, _ in osf_layers(fam.model))
    batch = fam.collate(rows[:4])
    opt = torch.optim.SGD([p for p in fam.model.parameters() if p.requires_grad], lr=0.1)
    fam.forward(fam.model, batch).loss.backward()
    opt.step()
    with torch.no_grad():
        before = fam.forward(fam.model, batch).logits
    method.on_task_end(c)
    with torch.no_grad():
        torch.testing.assert_close(fam.forward(fam.model, batch).logits, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"preserved": [1.0]}, "preserved"),
        ({"preserved": [-0.1, 0.2]}, "preserved"),
        ({"preserved": []}, "preserved"),
        ({"preserved": [True]}, "preserved"),
        ({"target_modules": []}, "target_modules"),
        ({"effective_rank": 4}, "effective_rank"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], bad: str) -> None:
    with pytest.raises(ValueError, match=f"'{bad}'"):
        get_method("osf", **options)


def test_unknown_target_and_missing_peft_osf(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"'target_modules'.*matches no module"):
        OSF(target_modules=["nope"]).prepare_model(tiny_encoder(), ENCODER_SPEC)
    monkeypatch.setattr(osf_module, "OSF_AVAILABLE", False)
    with pytest.raises(ValueError, match=r"needs PEFT's OSF \(peft.OSFConfig"):
        get_method("osf")
