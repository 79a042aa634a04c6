"""Where MIGU meets sharded, compiled and DeepSpeed-managed models (see docs/scale.md).

- **FSDP2** (``torch.distributed.fsdp.fully_shard``; Accelerate ``fsdp_version=2``): between
  steps every parameter and gradient is a DTensor sharded on dim 0. The statistics are still
  reduced with the one flat ``all_reduce``, every rank makes the same global masks, and
  :func:`row_shard` says which global rows (of dim ``row_dim``) the local shard holds, so the
  mask is written shard-locally. Uneven shards (d_out not a multiple of the world) follow
  ``torch.chunk``, as FSDP2 does. GPT-2's ``Conv1D`` keeps output rows on dim 1: every shard
  holds all of them, so its mask is written to the local shard as it is.
- **FSDP1** (``FullyShardedDataParallel``) flattens a block's weights into one ``FlatParameter``;
  the per-layer weights MIGU masks do not exist there: :func:`refuse_unsupported_wrappers` raises.
- **torch.compile**: a compiled wrapper (``OptimizedModule``) is unwrapped to ``_orig_mod``; hooks
  on the original module run inside the compiled graph (the dense statistic traces with no graph
  break). The sparse backward does not (one break per layer): refused.
- **DeepSpeed** runs the optimizer step inside ``backward()`` (through Accelerate too), so there is
  no window for ``apply()``; ``Masker.install_grad_hooks()`` masks inside the backward instead.
  :func:`check_deepspeed_config` names the options MIGU cannot follow.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..validation import check_choice, invalid

log = logging.getLogger(__name__)

# ZeRO stages whose gradients reach a tensor hook on the parameter in full (stage 3 gathers the
# parameter for its backward, so its gradient is full-shaped there too).
DEEPSPEED_STAGES = (0, 1, 2, 3)


def is_dtensor(t: Any) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (FSDP2 parameters and gradients)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def to_local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (a view: in-place writes reach the DTensor), else ``t``."""
    return t.to_local() if is_dtensor(t) else t


@dataclass
class RowShard:
    """The part of a (possibly sharded) tensor this rank holds, seen along its row dim.

    ``local`` is the local tensor (a view); it holds global rows ``start:stop`` of ``row_dim``
    (all rows when that dim is not sharded).
    """

    local: torch.Tensor
    start: int
    stop: int


def row_shard(t: torch.Tensor, row_dim: int, name: str) -> RowShard:
    """The local rows of ``t`` along ``row_dim``; ValueError for a layout MIGU cannot mask locally.

    Supported: plain tensors, and DTensors whose placements are ``Shard(0)`` (on at most one mesh
    dim) and ``Replicate()``: FSDP2, and HSDP's (Replicate, Shard(0)).
    """
    if not is_dtensor(t):
        return RowShard(t, 0, t.shape[row_dim])
    from torch.distributed.tensor import Shard

    rows = t.shape[row_dim]  # the global size
    start, stop = 0, rows
    row_sharded = False
    for mesh_dim, p in enumerate(t.placements):
        if p.is_replicate():
            continue
        if type(p) is Shard and p.dim == 0:
            if row_dim != 0:
                continue  # dim 0 is not the row dim (GPT-2 Conv1D): every shard holds every row
            if row_sharded:
                raise ValueError(_layout_error(name, t, "dim 0 is sharded over more than one mesh dim"))
            row_sharded = True
            n, rank = t.device_mesh.size(mesh_dim), t.device_mesh.get_local_rank(mesh_dim)
            chunk = -(-rows // n)  # torch.chunk's (and FSDP2's) chunk size: ceil(rows / n)
            start, stop = min(rank * chunk, rows), min((rank + 1) * chunk, rows)
            continue
        raise ValueError(_layout_error(name, t, f"placement {p!r} is not supported"))
    local = t.to_local()
    if local.shape[row_dim] != stop - start:
        why = f"the local shard has {local.shape[row_dim]} rows, expected {stop - start}"
        raise ValueError(_layout_error(name, t, why))
    return RowShard(local, start, stop)


def _layout_error(name: str, t: Any, why: str) -> str:
    return (
        f"MIGU cannot mask {name}: a DTensor with placements {tuple(t.placements)} on mesh "
        f"{tuple(t.device_mesh.shape)} ({why}). Supported: FSDP2's layout (fully_shard: Shard(0), or "
        "HSDP's Replicate + Shard(0)); tensor parallelism (other Shard dims, Partial, _StridedShard) is not."
    )


def unwrap_compiled(model: nn.Module) -> tuple[nn.Module, bool]:
    """(the module to hook, whether ``model`` was a ``torch.compile`` wrapper)."""
    from torch._dynamo.eval_frame import OptimizedModule

    if isinstance(model, OptimizedModule):
        return model._orig_mod, True
    return model, False


def refuse_unsupported_wrappers(model: nn.Module) -> None:
    """ValueError for wrappers whose parameters are not the per-layer weights MIGU masks."""
    if not dist.is_available():
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    for name, module in model.named_modules():
        if isinstance(module, FullyShardedDataParallel):
            raise ValueError(
                f"MIGU does not support FSDP1 (FullyShardedDataParallel at {name or 'the root'!r}): its "
                "FlatParameter hides the per-layer weights whose rows MIGU masks. Use FSDP2: "
                "torch.distributed.fsdp.fully_shard, or Accelerate's FSDP plugin with fsdp_version=2."
            )


def zero3_rows(weight: torch.Tensor, row_dim: int) -> int | None:
    """Rows of a DeepSpeed ZeRO-3 partitioned weight (its ``ds_shape``), or None if not partitioned."""
    shape = getattr(weight, "ds_shape", None)
    return int(shape[row_dim]) if shape is not None else None


def check_deepspeed_config(config: dict[str, Any], mode: str = "grad") -> int:
    """The ZeRO stage of a DeepSpeed config; ValueError naming an option MIGU cannot follow.

    MIGU under DeepSpeed masks in the backward (``Masker.install_grad_hooks``): ZeRO stages 0-3
    are accepted (stages 2 and 3 tested on CPU/gloo when deepspeed is installed); strict mode is
    not, as DeepSpeed steps inside ``backward()`` and keeps its own flat optimizer state.
    """
    zero = config.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        raise invalid("DeepSpeed config: zero_optimization", "a mapping", zero)
    stage = check_choice(
        zero.get("stage", 0), "MIGU under DeepSpeed: zero_optimization.stage", DEEPSPEED_STAGES
    )
    if mode == "strict":
        raise ValueError(
            "MIGUConfig.mode='strict' is not supported under DeepSpeed: the optimizer step runs inside "
            "backward() on DeepSpeed's own flat optimizer state, so masked rows cannot be saved and "
            "restored around it. Use mode='grad'."
        )
    return stage


def setup_for_accelerator(masker: Any, accelerator: Any) -> str:
    """Put ``masker`` in the mode an Accelerate run needs; returns ``"apply"`` or ``"backward"``.

    - DeepSpeed: checks the ZeRO config (:func:`check_deepspeed_config`) and installs the
      backward-time gradient hooks; call ``masker.apply()`` once per optimizer step (when
      ``accelerator.sync_gradients``) to close the step.
    - FSDP: only ``fsdp_version=2`` (FSDP1 is refused, naming the option); masks in ``apply()``.
    - anything else (one process, DDP): masks in ``apply()``.
    """
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        config = dict(getattr(plugin, "deepspeed_config", None) or {})
        if "zero_optimization" not in config:
            config["zero_optimization"] = {"stage": getattr(plugin, "zero_stage", 0)}
        check_deepspeed_config(config, masker.config.mode)
        masker.install_grad_hooks()
        return "backward"
    if kind == DistributedType.FSDP:
        version = getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1)
        if version != 2:
            raise ValueError(
                f"MIGU under Accelerate's FSDP needs fsdp_version=2 (FSDP2, fully_shard), got "
                f"fsdp_version={version}: FSDP1's FlatParameter hides the per-layer weights MIGU masks."
            )
    return "apply"


def compile_unsupported_reason(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` (inductor) cannot run here, or None if it can."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (torch >= 2.0 needed)"
    from torch._dynamo import is_dynamo_supported

    if not is_dynamo_supported():
        return f"torch.compile is not supported on this platform/Python (torch {torch.__version__})"
    if torch.device(device).type == "cpu":
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None and shutil.which("clang++") is None:
            return f"torch.compile on CPU needs a C++ compiler (inductor builds C++ kernels): {cxx} not found"
    return None
