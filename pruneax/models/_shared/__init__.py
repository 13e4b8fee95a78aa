"""Pieces shared by every architecture: checks, initialisers, parameter counts, checkpoints."""

from pruneax.models._shared.checkpoint import (
    read_checkpoint,
    read_safetensors,
)
from pruneax.models._shared.common import (
    param_count,
)

__all__ = [
    "param_count",
    "read_checkpoint",
    "read_safetensors",
]
