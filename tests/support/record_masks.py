"""Runs ``migu.cli`` with every MIGU mask recorded: after each ``Masker.apply`` the keep masks are
kept in order and written at exit to ``$MIGU_MASK_DIR/masks_rank<RANK>.safetensors`` as
``step<k>.<target>`` (k counts optimizer steps over the whole run). For tests that compare runs."""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from migu.cli import main
from migu.engine.masker import Masker

_recorded: dict[str, torch.Tensor] = {}
_original = Masker.apply


def _recording_apply(self: Masker) -> dict[str, torch.Tensor]:
    masks = _original(self)
    step = len({k.split(".", 1)[0] for k in _recorded})
    for name, keep in masks.items():
        _recorded[f"step{step}.{name}"] = keep.detach().to(torch.uint8).cpu().contiguous()
    return masks


def _save() -> None:
    out = Path(os.environ["MIGU_MASK_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    save_file(_recorded, str(out / f"masks_rank{os.environ.get('RANK', '0')}.safetensors"))


Masker.apply = _recording_apply  # type: ignore[method-assign]
atexit.register(_save)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
