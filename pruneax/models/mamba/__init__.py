"""Mamba (selective state-space) mixer and language model, its Hugging Face import, and
ToP-ViM token pruning of any Mamba mixer (``pruned_mixer_forward``)."""

from pruneax.models.mamba._config import MambaConfig
from pruneax.models.mamba._conv import causal_conv, gap_counts
from pruneax.models.mamba._hf import (
    load_mamba,
)
from pruneax.models.mamba._model import (
    MambaBlock,
    MambaLM,
    MambaMixer,
    MambaOutput,
)
from pruneax.models.mamba._prune import PRUNE_MODES, pruned_mixer_forward
from pruneax.models.mamba._ssm import GAP_RULES, MixerOutput, SSMBranch, SSMMixer, mixer_forward

__all__ = [
    "GAP_RULES",
    "PRUNE_MODES",
    "MambaBlock",
    "MambaConfig",
    "MambaLM",
    "MambaMixer",
    "MambaOutput",
    "MixerOutput",
    "SSMBranch",
    "SSMMixer",
    "causal_conv",
    "gap_counts",
    "load_mamba",
    "mixer_forward",
    "pruned_mixer_forward",
]
