"""MIGU inside Hugging Face ``Trainer``: a ``TrainerCallback`` that masks at each optimizer step.

``Trainer`` gives callbacks no event between the last micro-batch's backward and gradient
clipping, so the mask is applied in ``on_pre_optimizer_step``: after clipping, before
``optimizer.step()``. The clipped norm therefore includes the rows that are then masked (the
update of the kept rows is the same as with mask-then-clip whenever the norm is under
``max_grad_norm``). Set ``max_grad_norm=0`` and clip yourself to get mask-then-clip exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .config import MIGUConfig
from .masker import Masker, attach
from .strict import inner_optimizer

log = logging.getLogger(__name__)


class MIGUCallback(TrainerCallback):
    """Attach MIGU at train start, apply it at every optimizer step, detach at train end.

    Example::

        trainer = Trainer(model=model, args=args, train_dataset=ds,
                          callbacks=[migu.MIGUCallback(migu.MIGUConfig(threshold=0.7))])
    """

    def __init__(
        self,
        config: MIGUConfig | None = None,
        task_index: int = 0,
        clusters: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.config = config or MIGUConfig()
        self.task_index = task_index
        self.clusters = clusters  # MIGU+Cluster: {target name: [d_out] cluster ids}, set at train start
        self.masker: Masker | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs["model"]
        self.masker = attach(model, self.config, optimizer=kwargs.get("optimizer"))
        self.masker.task_index = self.task_index
        if self.clusters:
            self.masker.set_clusters(self.clusters)

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.masker is None:
            raise RuntimeError("MIGUCallback: on_pre_optimizer_step before on_train_begin")
        optimizer = kwargs.get("optimizer")
        if (
            self.config.mode == "strict"
            and optimizer is not None
            and self.masker.optimizer is not inner_optimizer(optimizer)
        ):
            self.masker.bind_optimizer(optimizer)
        self.masker.apply()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.masker is not None:
            self.masker.detach()
            self.masker = None
