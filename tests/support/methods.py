"""Tiny models, batches and a training loop shared by the method tests (CPU, milliseconds)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from migu.methods import CLMethod, StepContext, TaskContext
from migu.models import ModelSpec

from .models import build_tiny_model

VOCAB = 40
N_LABELS = 4

T5_SPEC = ModelSpec(lora_target_modules=("q", "v"), head_modules=(), task_type="SEQ_2_SEQ_LM")
ENCODER_SPEC = ModelSpec(lora_target_modules=("query", "value"), head_modules=("classifier",))


class _Attention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.query(x) @ self.key(x).transpose(1, 2) / x.shape[-1] ** 0.5
        scores = scores.masked_fill(mask[:, None, :] == 0, -1e4)
        return scores.softmax(-1) @ self.value(x)


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attention = _Attention(d)
        self.intermediate = _Dense(d, 2 * d)
        self.output = _Dense(2 * d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(x, mask)
        return x + self.output.dense(torch.relu(self.intermediate.dense(x)))


class TinyEncoderClassifier(nn.Module):
    """Stand-in for the encoder family's custom module: a head scored over the task's options."""

    def __init__(self, d: int = 16, layers: int = 2, n_labels: int = N_LABELS) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.layer = nn.ModuleList(_Block(d) for _ in range(layers))
        self.classifier = nn.Linear(d, n_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        option_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        x = self.embed(input_ids)
        for block in self.layer:
            x = block(x, attention_mask)
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        logits = self.classifier((x * m).sum(1) / m.sum(1).clamp_min(1.0))
        if option_mask is not None:
            logits = logits.masked_fill(~option_mask, -1e4)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def tiny_t5(seed: int = 0) -> nn.Module:
    return build_tiny_model("t5", head="seq2seq-lm", seed=seed, vocab_size=VOCAB)


def tiny_encoder(seed: int = 0, **kwargs: int) -> nn.Module:
    torch.manual_seed(seed)
    return TinyEncoderClassifier(**kwargs)


def t5_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (4, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[2:, 5:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = torch.randint(2, VOCAB, (4, 3), generator=g)
    dec_mask = torch.ones_like(labels)
    dec_mask[3, 2:] = 0
    labels = labels.masked_fill(dec_mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "decoder_attention_mask": dec_mask}


def encoder_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (4, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    option_mask = torch.ones(4, N_LABELS, dtype=torch.bool)
    option_mask[0, 3] = False
    labels = torch.tensor([0, 1, 2, 3])
    return {"input_ids": ids, "attention_mask": mask, "option_mask": option_mask, "labels": labels}


FAMILIES: dict[str, tuple[Callable[..., nn.Module], Callable[..., dict[str, torch.Tensor]], ModelSpec]] = {
    "t5": (tiny_t5, t5_batch, T5_SPEC),
    "encoder": (tiny_encoder, encoder_batch, ENCODER_SPEC),
}


def task_ctx(model: nn.Module | None, i: int, name: str = "t", examples: Sequence[Any] = ()) -> TaskContext:
    """The context the runner gives a method for task ``i`` (no family: tests feed batches by hand)."""
    return TaskContext(model if model is not None else nn.Identity(), i, name, examples)


def step_terms(
    method: CLMethod,
    model: nn.Module,
    task_index: int,
    batch: dict[str, torch.Tensor],
    out: Any,
    step: int = 0,
) -> dict[str, torch.Tensor]:
    """The method's extra loss terms for one batch, as the runner asks for them."""
    return method.step_loss(StepContext(task_ctx(model, task_index), model, batch, out, 0))


def train_steps(
    model: nn.Module,
    method: CLMethod,
    task_index: int,
    batch: dict[str, torch.Tensor],
    steps: int = 3,
    lr: float = 1e-2,
) -> list[float]:
    """A few Adam steps on task loss + the method's loss terms; returns the total losses."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out = model(**batch)
        loss = out.loss + sum(step_terms(method, model, task_index, batch, out).values())
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def run_task(
    method: CLMethod, model: nn.Module, i: int, batch: dict[str, torch.Tensor], steps: int = 3
) -> None:
    """on_task_start, a few training steps, on_task_end (no examples: LoRA methods ignore them)."""
    method.on_task_start(task_ctx(model, i, f"task{i}"))
    train_steps(model, method, i, batch, steps)
    method.on_task_end(task_ctx(model, i, f"task{i}", []))


def snapshot(model: nn.Module, contains: str = "") -> dict[str, torch.Tensor]:
    """Clones of the parameters whose name contains ``contains``."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if contains in n}


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    return model(**batch).logits
