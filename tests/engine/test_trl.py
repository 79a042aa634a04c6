"""MIGU inside TRL's SFTTrainer: the mask hits the gradient the optimizer consumes (issue 13.6)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from support.models import byte_bpe_tokenizer, tiny_llama

import migu

trl = pytest.importorskip("trl", reason="TRL not installed (pip install 'migu[dev]')")
datasets = pytest.importorskip("datasets")

from transformers import TrainerCallback  # noqa: E402

TEXTS = [f"def f{i}(x):\n    return x + {i}\n" for i in range(16)]


class MaskedRowsStay(TrainerCallback):
    """Before each optimizer step: the masks MIGU just applied and the weights; after it: the masked
    rows must not have moved (SGD without momentum or decay: a zero gradient is a zero update)."""

    def __init__(self, migu_cb: migu.MIGUCallback) -> None:
        self.cb = migu_cb
        self.before: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.steps = 0
        self.checked = 0

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        masker = self.cb.masker
        assert masker is not None
        weights = {t.name: t.weight for t in masker.targets}
        self.before = {n: (weights[n].detach().clone(), m.clone()) for n, m in masker.masks.items()}
        for n, (_, keep) in self.before.items():
            grad = weights[n].grad
            assert grad is not None and torch.count_nonzero(grad[~keep]) == 0, n  # the grad SGD will read

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        masker = self.cb.masker
        assert masker is not None
        weights = {t.name: t.weight for t in masker.targets}
        for n, (w0, keep) in self.before.items():
            w1 = weights[n].detach()
            assert torch.equal(w1[~keep], w0[~keep]), n  # masked rows unchanged by the step
            assert not torch.equal(w1[keep], w0[keep]), n  # kept rows trained
            self.checked += 1
        self.steps += 1


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """The Trainer sets Accelerate's per-process state; later runs in this process need their own."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("accum", [1, 2])
def test_migu_callback_in_sft_trainer(tmp_path, accum: int) -> None:
    tok = byte_bpe_tokenizer(TEXTS)
    model = tiny_llama(tok, max_positions=128)
    cb = migu.MIGUCallback(migu.MIGUConfig(threshold=0.5))
    check = MaskedRowsStay(cb)
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accum,
        learning_rate=0.1,
        optim="sgd",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping: MIGU masks in on_pre_optimizer_step, after the Trainer's clip
        max_length=64,
        report_to="none",
        save_strategy="no",
        logging_steps=100,
        use_cpu=True,
        bf16=False,  # TRL turns bf16 on where it can; Accelerate keeps one precision per process
        dataloader_num_workers=0,
    )
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list([{"text": t} for t in TEXTS]),
        processing_class=tok,
        callbacks=[cb, check],
    )
    trainer.train()
    assert check.steps == 3 and check.checked == 3 * len(check.before) > 0
    assert cb.masker is None  # detached at train end
