"""Every field of every preset is settable from the command line (issue 20 item 3).

Each experiment built on the shared parser (all but ``reproduce``, which runs the others at
their presets and has no preset of its own) gets a ``--<field>`` flag per field of its preset
dataclass (``instability`` those of the lottery ticket's, which it trains); ``--help`` lists
them with the presets' values. Checked by round trip from another preset (every field of
preset P given as flags yields P), and one changed value changes exactly that field.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import typing

import pytest

EXPERIMENTS = [
    "vit_token_pruning",
    "ssm_token_pruning",
    "vlm_token_pruning",
    "vlm_testbed",
    "graph_pruning",
    "llm_weight_pruning",
    "llm_structured_pruning",
    "lottery_ticket",
]


def _capture(monkeypatch, module):
    """The module's main() returns the config it would run, without running it."""
    monkeypatch.setattr(module, "run", lambda cfg, *a, **k: cfg)
    if hasattr(module, "claims"):
        monkeypatch.setattr(module, "claims", lambda r: [])


def _as_flags(name: str, value, tp) -> list[str] | None:
    """``value`` of field ``name`` as command-line words (None: not expressible, e.g. ())."""
    if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and inner and inner[0] in (int, float, str):
            return None  # an optional scalar left at None: nothing to type
        tp = inner[0] if len(inner) == 1 else tp
    if isinstance(value, bool):
        return [f"--{name}" if value else f"--no-{name}"]
    if tp in (int, float, str):
        return [f"--{name}", str(value)]
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if args[0] in (int, float, str):
            return [f"--{name}", *map(str, value)] if value else None
    return [f"--{name}", json.dumps(value)]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_field_round_trips_through_its_flag(name, monkeypatch, tmp_path):
    """Starting from another preset, every field of preset P given as flags yields P (a flag
    that were ignored would leave the other preset's value)."""
    module = importlib.import_module(f"pruneax.experiments.{name}")
    _capture(monkeypatch, module)
    names = list(module.PRESETS)
    changed = 0
    for i, preset in enumerate(names):
        cfg = module.PRESETS[preset]
        base = names[(i + 1) % len(names)]
        hints = typing.get_type_hints(type(cfg))
        argv = ["--preset", base, "--workdir", str(tmp_path)]
        want = module.PRESETS[base]
        for f in dataclasses.fields(cfg):
            words = _as_flags(f.name, getattr(cfg, f.name), hints[f.name])
            if words is not None:
                argv += words
                want = dataclasses.replace(want, **{f.name: getattr(cfg, f.name)})
                changed += getattr(cfg, f.name) != getattr(module.PRESETS[base], f.name)
        assert module.main(argv) == want, (name, preset, base)
    assert changed > 0 or len(names) == 1  # the presets differ: the flags did something


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_one_flag_changes_one_field_and_help_lists_them_all(name, monkeypatch, tmp_path, capsys):
    module = importlib.import_module(f"pruneax.experiments.{name}")
    _capture(monkeypatch, module)
    cfg = module.PRESETS["tiny"]
    hints = typing.get_type_hints(type(cfg))
    field = next(f.name for f in dataclasses.fields(cfg) if hints[f.name] is int)
    value = getattr(cfg, field) + 1
    got = module.main(["--workdir", str(tmp_path), f"--{field}", str(value)])
    assert got == dataclasses.replace(cfg, **{field: value})
    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(cfg):
        assert f"--{f.name}" in text, (name, f.name)


def test_bad_flag_values_are_refused_by_the_parser(monkeypatch, tmp_path, capsys):
    module = importlib.import_module("pruneax.experiments.vit_token_pruning")
    _capture(monkeypatch, module)
    for argv in (["--seed", "x"], ["--normalize", "{not json"], ["--augment", "1"]):
        with pytest.raises(SystemExit):
            module.main(["--workdir", str(tmp_path), *argv])
    assert "not JSON" in capsys.readouterr().err


class _Got(Exception):
    """Carries the config an experiment would run out of its main()."""


def _flags_for(cfg, base_cfg, workdir) -> tuple[list[str], object]:
    hints = typing.get_type_hints(type(cfg))
    argv, want = ["--workdir", str(workdir)], base_cfg
    for f in dataclasses.fields(cfg):
        words = _as_flags(f.name, getattr(cfg, f.name), hints[f.name])
        if words is not None:
            argv += words
            want = dataclasses.replace(want, **{f.name: getattr(cfg, f.name)})
    return argv, want


def test_token_demo_and_instability_take_every_field(monkeypatch, tmp_path):
    from pruneax.experiments import instability, lottery_ticket, token_demo

    demo = token_demo.PRESETS
    argv, want = _flags_for(demo["tiny"], demo["default"], tmp_path)
    assert token_demo.parse_args([*argv, "--preset", "default"]) == (want, str(tmp_path))
    assert want != demo["default"]

    def capture(cfg, *args, **kwargs):
        raise _Got(cfg)

    monkeypatch.setattr(instability, "run", capture)
    lt = lottery_ticket.PRESETS
    argv, want = _flags_for(lt["cpu_rewind_resnet"], lt["tiny"], tmp_path)
    with pytest.raises(_Got) as got:
        instability.main([*argv, "--preset", "tiny", "--spawn", "0", "5"])
    assert got.value.args[0] == want and want != lt["tiny"]
