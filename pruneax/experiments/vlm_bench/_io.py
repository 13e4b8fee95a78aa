"""Small file and argument helpers shared by the benchmark readers and scorers.

Every failure is a ``ValueError`` that names the argument or the file and says what was
expected, so a wrong ``--data`` folder is reported before any model runs.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."


def data_root(data_dir: str | pathlib.Path, benchmark: str) -> pathlib.Path:
    """Return ``data_dir`` as a ``Path``; raise ``ValueError`` if it is not a folder."""
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"{benchmark}: data_dir {str(root)!r} is not an existing folder")
    return root


def first_existing(root: pathlib.Path, names: Sequence[str], what: str, benchmark: str):
    """Return the first of ``root / name`` that exists; raise ``ValueError`` listing them all."""
    for name in names:
        if (root / name).exists():
            return root / name
    tried = ", ".join(str(root / n) for n in names)
    raise ValueError(f"{benchmark}: data_dir has no {what}; expected one of: {tried}")


def load_json(path: pathlib.Path, benchmark: str) -> Any:
    """Parse one JSON file; a malformed file raises ``ValueError`` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{benchmark}: cannot read JSON file {str(path)!r}: {err}") from err


def load_jsonl(path: pathlib.Path, benchmark: str) -> list[dict]:
    """Parse a JSON-lines file (one object per non-empty line); errors name file and line."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{benchmark}: {str(path)!r} line {n} is not JSON: {err}") from err
        if not isinstance(row, dict):
            raise ValueError(f"{benchmark}: {str(path)!r} line {n} is not a JSON object")
        rows.append(row)
    return rows


def field(row: Mapping, key: str, where: str, benchmark: str) -> Any:
    """``row[key]``, or a ``ValueError`` naming the row (``where``) and the missing field."""
    if not isinstance(row, Mapping) or key not in row:
        raise ValueError(f"{benchmark}: malformed row {where}: expected a field {key!r}")
    return row[key]


def check_split(split: str | None, known: Sequence[str], benchmark: str) -> list[str]:
    """The splits to read: all of ``known`` for ``None``, else ``[split]`` if it is known."""
    if split is None:
        return list(known)
    if split not in known:
        raise ValueError(f"{benchmark}: split must be one of {list(known)} or None, got {split!r}")
    return [split]


def check_limit(limit: int | None, benchmark: str) -> int | None:
    """Validate ``limit`` (``None`` or a positive int) and return it."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{benchmark}: limit must be a positive int or None, got {limit!r}")
    return limit


def predictions_for(items: Sequence, predictions: Mapping[str, str], benchmark: str) -> list[str]:
    """The prediction text of every item, in order; ``ValueError`` if any is missing."""
    if not items:
        raise ValueError(f"{benchmark}: items is empty; nothing to score")
    missing = [it.id for it in items if it.id not in predictions]
    if missing:
        raise ValueError(
            f"{benchmark}: predictions is missing {len(missing)} of {len(items)} items "
            f"(first: {missing[:3]})"
        )
    texts = [predictions[it.id] for it in items]
    bad = [it.id for it, t in zip(items, texts, strict=True) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{benchmark}: predictions must be strings; not for {bad[:3]}")
    return texts


def percent(num: float, den: float) -> float:
    """``100 * num / den``, and 0.0 for an empty denominator."""
    return 100.0 * num / den if den else 0.0


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean of ``values`` (0.0 when empty)."""
    values = list(values)
    return sum(values) / len(values) if values else 0.0
