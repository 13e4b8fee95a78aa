"""Pieces shared by every architecture: checks, initialisers, parameter counts, checkpoints."""

from pruneax.models._shared.checkpoint import (
    read_checkpoint,
    read_safetensors,
)
from pruneax.models._shared.common import (
    param_count,
)
from pruneax.models._shared.safetensors_write import write_safetensors
from pruneax.models._shared.sharding import partition_spec, shard_model

__all__ = [
    "param_count",
    "partition_spec",
    "read_checkpoint",
    "read_safetensors",
    "shard_model",
    "write_safetensors",
]
