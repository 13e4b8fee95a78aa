"""Mamba (selective state-space) mixer and language model, and its Hugging Face import."""

from pruneax.models.mamba._hf import (
    load_mamba,
)
from pruneax.models.mamba._model import (
    MambaBlock,
    MambaConfig,
    MambaLM,
    MambaMixer,
    MambaOutput,
)

__all__ = [
    "MambaBlock",
    "MambaConfig",
    "MambaLM",
    "MambaMixer",
    "MambaOutput",
    "load_mamba",
]
