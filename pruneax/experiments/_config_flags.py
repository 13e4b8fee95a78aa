"""Every field of an experiment's preset dataclass as a command-line flag.

``ConfigParser(presets)`` is an ``argparse.ArgumentParser`` that, when it parses, first adds a
``--<field>`` flag for every field of the presets' dataclass that no flag names yet (flags an
experiment declares itself keep their own help and choices). ``--help`` lists them with each
preset's value. Types come from the dataclass annotations: ``bool`` -> ``--x / --no-x``,
``int`` / ``float`` / ``str`` (or ``X | None``) -> that type, ``tuple[T, ...]`` -> one or more
``T``; anything else (nested tuples, dicts) is given as JSON, lists read back as tuples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any


def _tuples(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    if isinstance(v, dict):
        return {k: _tuples(x) for k, x in v.items()}
    return v


class _Null:
    """``null`` given on the command line: the field becomes None (a plain None means "not
    given", keeping the preset's value)."""

    def __repr__(self) -> str:
        return "null"


NULL = _Null()


def given_value(v: Any) -> Any:
    """A parsed flag's value as the config field takes it (``NULL`` -> None, lists -> tuples)."""
    return None if v is NULL else tuple(v) if isinstance(v, list) else v


def _json(text: str) -> Any:
    try:
        v = _tuples(json.loads(text))
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r} ({e.msg})") from None
    return NULL if v is None else v


def _strip_none(tp: Any) -> Any:
    """``X | None`` -> ``X`` (other unions unchanged)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def flag_kwargs(tp: Any) -> dict[str, Any]:
    """``add_argument`` keywords for a field of type ``tp``.

    Example:
      >>> from pruneax.experiments._config_flags import flag_kwargs
      >>> flag_kwargs(tuple[float, ...])["nargs"], flag_kwargs(int | None)["type"]
      ('+', <class 'int'>)
    """
    tp = _strip_none(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if tp in (int, float, str):
        return {"type": tp}
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if args[0] in (int, float, str):
            return {"type": args[0], "nargs": "+"}
    return {"type": _json, "metavar": "JSON"}


class ConfigParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that adds a flag per field of ``presets``' dataclass on parsing.

    Example:
      >>> import dataclasses
      >>> from pruneax.experiments._config_flags import ConfigParser
      >>> @dataclasses.dataclass(frozen=True)
      ... class C:
      ...     lr: float = 0.1
      ...     layers: tuple[int, ...] = (1,)
      ...     augment: bool = False
      >>> p = ConfigParser({"tiny": C()}, description="demo")
      >>> vars(p.parse_args(["--lr", "0.5", "--layers", "2", "3", "--augment"]))
      {'lr': 0.5, 'layers': [2, 3], 'augment': True}
    """

    def __init__(self, presets: dict[str, Any], **kwargs: Any):
        super().__init__(**kwargs)
        self._presets = presets
        self._added = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if not self._added:
            self._added = True
            self._add_config_flags()
        return super().parse_known_args(args, namespace)

    def _add_config_flags(self) -> None:
        cls = type(next(iter(self._presets.values())))
        hints = typing.get_type_hints(cls)
        taken = {a.dest for a in self._actions}
        group = self.add_argument_group("config fields (default: the preset's value)")
        for f in dataclasses.fields(cls):
            if f.name in taken:
                continue
            values = {name: getattr(cfg, f.name) for name, cfg in self._presets.items()}
            shown = (
                f"preset value {next(iter(values.values()))!r}"
                if len({repr(v) for v in values.values()}) == 1
                else "presets: " + ", ".join(f"{k}={v!r}" for k, v in values.items())
            )
            group.add_argument(
                f"--{f.name}",
                default=None,
                help=shown.replace("%", "%%"),
                **flag_kwargs(hints[f.name]),
            )
