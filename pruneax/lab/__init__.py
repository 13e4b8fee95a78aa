"""The experiment and benchmark harness, installed with pruneax.

- ``machine()`` / ``describe()`` / ``versions()``: one description of the machine and software
  a number was measured on.
- ``time_alternating`` / ``medians`` / ``ratios``: variants timed side by side in one process
  (alternated within each repeat), medians and ratios of medians.
- ``write_text`` / ``write_json`` / ``write_report`` / ``markdown_table``: results written
  atomically, a benchmark's markdown + JSON pair.
"""

from pruneax.lab._io import markdown_table, write_json, write_report, write_text
from pruneax.lab._machine import cache_bytes, cpu_model, describe, machine, versions
from pruneax.lab._timing import medians, ratios, time_alternating

__all__ = [
    "cache_bytes",
    "cpu_model",
    "describe",
    "machine",
    "markdown_table",
    "medians",
    "ratios",
    "time_alternating",
    "versions",
    "write_json",
    "write_report",
    "write_text",
]
