"""Model families for continual instruction classification: encoder, seq2seq and causal LMs.

``build_family(ModelConfig(...), label_space)`` loads one model (or builds a random one) and
returns a :class:`ModelFamily` with ``collate`` / ``loss`` / ``predict`` / ``spec`` for the runner.
"""

from .base import ExampleLike, ModelFamily, fit_prompt, lora_targets_for
from .config import HUB_ALIASES, ModelConfig, minilm_dir, resolve_model_name
from .encoder import EncoderClassifier, EncoderFamily, LabelHead
from .factory import build_family, build_mlm_family, build_sft_family, detect_family
from .generative import CausalFamily, GenerativeFamily, Seq2SeqFamily
from .mlm import MaskedLM, MaskedLMFamily
from .sft import SFTFamily
from .spec import FamilyOutput, ModelSpec

__all__ = [
    "HUB_ALIASES",
    "CausalFamily",
    "EncoderClassifier",
    "EncoderFamily",
    "ExampleLike",
    "FamilyOutput",
    "GenerativeFamily",
    "LabelHead",
    "MaskedLM",
    "MaskedLMFamily",
    "ModelConfig",
    "ModelFamily",
    "ModelSpec",
    "SFTFamily",
    "Seq2SeqFamily",
    "build_family",
    "build_mlm_family",
    "build_sft_family",
    "detect_family",
    "fit_prompt",
    "lora_targets_for",
    "minilm_dir",
    "resolve_model_name",
]
