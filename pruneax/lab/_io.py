"""Results written atomically: JSON, text, and the markdown + JSON pair of a benchmark."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it)
os.umask(_UMASK)


def _default(obj: Any) -> Any:
    """JSON for NumPy / JAX scalars and arrays, tuples and paths."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``): a reader or a crash never sees half a file. Creates parent folders.

    Args:
      path: the file.
      text: its content.

    Returns:
      The path.

    Example:
      >>> import tempfile, pathlib
      >>> from pruneax.lab import write_text
      >>> p = write_text(pathlib.Path(tempfile.mkdtemp()) / "a" / "b.txt", "hi")
      >>> p.read_text()
      'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would create it (mkstemp gives 0600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` as indented JSON, atomically (see ``write_text``). NumPy / JAX arrays and
    scalars become lists / numbers.

    Args:
      path: the file.
      obj: a JSON-able object.

    Returns:
      The path.

    Raises:
      TypeError: for an object JSON cannot hold (nothing is written then).

    Example:
      >>> import json, tempfile, pathlib
      >>> import numpy as np
      >>> from pruneax.lab import write_json
      >>> p = write_json(pathlib.Path(tempfile.mkdtemp()) / "r.json", {"x": np.arange(2)})
      >>> json.loads(p.read_text())
      {'x': [0, 1]}
    """
    return write_text(path, json.dumps(obj, indent=1, default=_default) + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (``|`` inside cells escaped).

    Args:
      header: column names.
      rows: one sequence of cells per row, each as long as ``header``.

    Returns:
      The table, one line per row, ending in a newline.

    Raises:
      ValueError: if a row's length differs from the header's.

    Example:
      >>> from pruneax.lab import markdown_table
      >>> print(markdown_table(["a", "b"], [[1, "x|y"]]), end="")
      | a | b |
      |---|---|
      | 1 | x\\|y |
    """
    cell = lambda v: str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(
                f"markdown_table: rows[{i}] has {len(row)} cells, expected {len(header)}"
            )
        lines.append("| " + " | ".join(map(cell, row)) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: str | os.PathLike, markdown: str, result: dict[str, Any]) -> Path:
    """A benchmark's two outputs: ``out`` (markdown, for people) and ``out`` with suffix
    ``.json`` (every number), both written atomically.

    Args:
      out: the markdown path (``results/benchmarks/scan.md``).
      markdown: its text.
      result: the JSON-able result.

    Returns:
      The JSON path.

    Example:
      >>> import tempfile, pathlib
      >>> from pruneax.lab import write_report
      >>> j = write_report(pathlib.Path(tempfile.mkdtemp()) / "b.md", "# b\\n", {"rows": []})
      >>> j.name, j.with_suffix(".md").read_text()
      ('b.json', '# b\\n')
    """
    out = Path(out)
    write_text(out, markdown)
    return write_json(out.with_suffix(".json"), result)
