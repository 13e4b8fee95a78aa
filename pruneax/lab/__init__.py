"""The experiment and benchmark harness, installed with pruneax.

- ``machine()`` / ``describe()`` / ``versions()``: one description of the machine and software
  a number was measured on.
- ``time_alternating`` / ``medians`` / ``ratios``: variants timed side by side in one process
  (alternated within each repeat), medians and ratios of medians.
- ``write_text`` / ``write_json`` / ``write_report`` / ``markdown_table``: results written
  atomically, a benchmark's markdown + JSON pair.
- ``Checkpoints`` / ``Progress`` / ``config_json`` / ``lock_directory``: resumable runs (orbax
  checkpoints of possibly sharded pytrees stored by leaf path name, a corrupt one set aside
  for the previous one; a workdir's ``progress.json`` tied to one config; one live run per
  directory).
- ``data_mesh`` / ``model_mesh`` / ``shard_batch`` / ``replicate`` / ``llm_param_specs`` /
  ``shard_params`` / ``constrain_batch`` / ``batch_multiple`` / ``initialize_distributed`` /
  ``to_host``:
  data and Megatron-style model parallelism over a ``jax.sharding.Mesh``.
- ``compilation_cache`` / ``default_cache_dir`` / ``CompileClock``: JAX's persistent
  compilation cache for reruns, and the seconds spent compiling.
- ``progress`` / ``MetricWriter``: a progress bar on a terminal, TensorBoard curves from
  process 0.
- ``Claim`` / ``compare`` / ``versus`` and the verdicts ``HOLDS`` / ``FAILS`` / ``NOISE`` /
  ``NA``: a paper's claim beside a measured result, with a computed verdict.
"""

from pruneax.lab._checkpoints import Checkpoints, Progress, config_json, lock_directory
from pruneax.lab._claims import FAILS, HOLDS, NA, NOISE, VERDICTS, Claim, compare, versus
from pruneax.lab._compile import CompileClock, compilation_cache, default_cache_dir
from pruneax.lab._io import markdown_table, write_json, write_report, write_text
from pruneax.lab._machine import cache_bytes, cpu_model, describe, machine, versions
from pruneax.lab._parallel import (
    batch_multiple,
    constrain_batch,
    data_mesh,
    initialize_distributed,
    llm_param_specs,
    model_mesh,
    replicate,
    shard_batch,
    shard_params,
    to_host,
)
from pruneax.lab._progress import MetricWriter, progress
from pruneax.lab._timing import medians, ratios, time_alternating

__all__ = [
    "FAILS",
    "HOLDS",
    "NA",
    "NOISE",
    "VERDICTS",
    "Checkpoints",
    "Claim",
    "CompileClock",
    "MetricWriter",
    "Progress",
    "batch_multiple",
    "cache_bytes",
    "compare",
    "compilation_cache",
    "config_json",
    "constrain_batch",
    "cpu_model",
    "data_mesh",
    "default_cache_dir",
    "describe",
    "initialize_distributed",
    "llm_param_specs",
    "lock_directory",
    "machine",
    "markdown_table",
    "medians",
    "model_mesh",
    "progress",
    "ratios",
    "replicate",
    "shard_batch",
    "shard_params",
    "time_alternating",
    "to_host",
    "versions",
    "versus",
    "write_json",
    "write_report",
    "write_text",
]
