"""Evaluations of generated code and text (HumanEval pass@k in a subprocess sandbox).

Only standard-library modules are imported here; torch/transformers load inside the functions that
need them.
"""

from .sandbox import Sandbox, SandboxConfig, SandboxError, SandboxInfo, SandboxResult

__all__ = ["Sandbox", "SandboxConfig", "SandboxError", "SandboxInfo", "SandboxResult"]
