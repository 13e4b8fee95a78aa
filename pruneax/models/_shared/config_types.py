"""Type checks of Hugging Face ``config.json`` values, for the shared loader (``loader.py``).

A value of the wrong type would otherwise be converted silently (``int(16.7)`` is 16) or fail
deep inside a model's config with a message naming neither the file nor the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Handled attributes with an int default that transformers itself writes as ``null`` (Qwen2's
# sliding window when ``use_sliding_window`` is false) or as ``[height, width]`` (image sizes).
NULLABLE_INTS = frozenset({"sliding_window", "max_window_layers"})
INT_PAIRS = frozenset({"image_size", "patch_size"})
# Handled attributes whose default (``None``, or none at all: v4 names) does not tell their type:
# ``null`` or a value of this kind.
OPTIONAL_KINDS = {
    "head_dim": "int",
    "num_key_value_heads": "int",
    "intermediate_size": "int",
    "pooler_output_size": "int",
    "rope_theta": "number",
    "partial_rotary_factor": "number",
    "rope_parameters": "object",
    "rope_scaling": "object",
    "vision_config": "object",
    "vision_config_dict": "object",
    "layer_types": "strings",
}
_KINDS = {
    "int": ("an int or null", lambda v: _is_int(v)),
    "number": ("a finite number or null", lambda v: _is_number(v)),
    "object": ("an object or null", lambda v: isinstance(v, dict)),
    "strings": ("a list of strings or null", lambda v: _is_strings(v)),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def type_error(key: str, value: Any, default: Any) -> str | None:
    """What ``value`` of attribute ``key`` should be, given transformers' ``default``.

    Args:
      key: the attribute's name (``NULLABLE_INTS`` may be ``null``, ``INT_PAIRS`` ``[h, w]``).
      value: its value in ``config.json``.
      default: transformers' default, which gives the type: bool, int (not a float such as
        16.7, which would be truncated), float (any finite number) or str (or an int, as
        Mamba's ``time_step_rank``); with a ``None`` default (also for an attribute that has
        none), the kind in ``OPTIONAL_KINDS`` or ``null``; otherwise nothing is checked.

    Returns:
      ``None`` if ``value`` has the right type, else what it should be (for the message).

    Example:
      >>> type_error("hidden_size", 16.7, 768)
      'an int'
      >>> type_error("image_size", [224, 224], 224) is None
      True
    """
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        if _is_int(value) or (value is None and key in NULLABLE_INTS):
            return None
        pair = isinstance(value, list) and len(value) == 2 and all(map(_is_int, value))
        if key in INT_PAIRS:
            return None if pair else "an int or [height, width] ints"
        return "an int"
    if isinstance(default, float):
        return None if _is_number(value) else "a finite number"
    if isinstance(default, str):
        return None if isinstance(value, str) or _is_int(value) else "a string"
    if default is None and key in OPTIONAL_KINDS:
        want, ok = _KINDS[OPTIONAL_KINDS[key]]
        return None if value is None or ok(value) else want
    return None


def check_common(cfg: Mapping[str, Any], where: str) -> None:
    """Checks the types of the common attributes the loaders read.

    Args:
      cfg: the parsed ``config.json``.
      where: starts every message (the loader and the file).

    Raises:
      ValueError: naming the key, if ``architectures`` is not a list of strings, ``num_labels``
        not an int >= 0, or ``id2label`` / ``label2id`` not an object.

    Example:
      >>> check_common({"architectures": ["ViTModel"], "num_labels": 3}, "load_vit")
      >>> try:
      ...     check_common({"num_labels": 2.5}, "load_vit: 'config.json'")
      ... except ValueError as e:
      ...     print(e)
      load_vit: 'config.json': 'num_labels' must be an int >= 0; got 2.5
    """
    arch = cfg.get("architectures")
    if arch is not None and not (isinstance(arch, list) and all(isinstance(a, str) for a in arch)):
        raise ValueError(
            f"{where}: 'architectures' must be a list of class names (strings); got {arch!r}"
        )
    if "num_labels" in cfg and not (_is_int(cfg["num_labels"]) and cfg["num_labels"] >= 0):
        raise ValueError(f"{where}: 'num_labels' must be an int >= 0; got {cfg['num_labels']!r}")
    for key in ("id2label", "label2id"):
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise ValueError(f"{where}: {key!r} must be an object; got {cfg[key]!r}")
