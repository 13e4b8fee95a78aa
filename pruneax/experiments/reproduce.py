"""Every pruneax experiment at one preset, and one report that sets each paper's claim beside
the measured result.

Run (the README's main job; a few minutes on a 2-core CPU, no download: scikit-learn's bundled
digits):

    python -m pruneax.experiments.reproduce --workdir results/reproduce

The full presets (MNIST / CIFAR-10 read from a directory, see ``pruneax.data``):

    python -m pruneax.experiments.reproduce --preset cpu --workdir runs/cpu \
      --data_dir ../shared/data
    python -m pruneax.experiments.reproduce --preset gpu --workdir runs/gpu --data_dir DATA

Each experiment runs through its own importable ``run(config, workdir, ...)`` into
``WORKDIR/<experiment>/`` (so ``python -m experiments.<experiment> --preset P --workdir
WORKDIR/<experiment>`` reproduces one of them alone), then ``WORKDIR/report.md`` collects the
claims table, every experiment's tables and plots, the machine, the package versions and the
commands; ``WORKDIR/report.json`` holds the same claims as data.

An experiment module may offer extra presets (``extra_presets(preset, data_dir)``), run after its
own into ``WORKDIR/<experiment>_<preset>/``: at ``cpu`` / ``gpu``, ``vit_token_pruning`` adds
``pretrained_mnist`` (a ViT trained elsewhere, when the data directory holds its checkpoint), so
the ViT claims are reported per model, each claim naming its model and pruning layer.

Interrupted runs resume: the experiments resume from their own orbax checkpoints, and an
experiment already finished at the same preset (recorded in ``WORKDIR/reproduce.json``) is not
run again (``--force`` reruns everything).

Verdicts are statistical, never hard-coded: a claim that compares two accuracies measured on n
test images "holds" when the difference exceeds two standard errors of a difference of two
binomial proportions (sqrt(2 p (1 - p) / n)), "does not hold" when it is that far the other way,
and is "within noise" otherwise. At the ``tiny`` preset (models trained for seconds, 200-360
test images) the verdicts check that the pipeline runs end to end; they are not evidence.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from pruneax import lab
from pruneax.experiments import _common as common
from pruneax.experiments._common import Experiment
from pruneax.lab import FAILS, HOLDS, NA, NOISE, Claim, compare  # noqa: F401  (re-exported)

PRESETS = ("tiny", "cpu", "gpu")


# The experiments reproduce runs, in this order; each module declares its own ``EXPERIMENT``
# (presets, whether it reads a data dir, its claims reader, a summary).
NAMES = (
    "token_demo",
    "lottery_ticket",
    "vit_token_pruning",
    "ssm_token_pruning",
    "vlm_token_pruning",
    "vlm_testbed",
)


def _module(name: str) -> Any:
    return importlib.import_module(f"pruneax.experiments.{name}")


EXPERIMENTS: tuple[Experiment, ...] = tuple(_module(n).EXPERIMENT for n in NAMES)


# ------------------------------------------------------------------------- running


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of an experiment: ``key`` names its subdirectory, state entry and report
    section (the experiment's name; ``<name>_<preset>`` for an extra preset)."""

    key: str
    exp: Experiment
    preset: str  # the experiment's own preset


def jobs(chosen: list[Experiment], preset: str, data_dir: str | None) -> list[Job]:
    """The runs for ``preset``: each experiment at its own preset, then the extra presets its
    module offers (``extra_presets(preset, data_dir)``: e.g. ``vit_token_pruning``'s pretrained
    MNIST ViT when the data directory holds it)."""
    out = []
    for exp in chosen:
        out.append(Job(exp.name, exp, exp.presets[preset]))
        extra = getattr(_module(exp.name), "extra_presets", None)
        for own in extra(preset, data_dir) if extra else ():
            out.append(Job(f"{exp.name}_{own}", exp, own))
    return out


def _experiment_config(job: Job) -> Any:
    module = _module(job.exp.name)
    return module, module.PRESETS[job.preset]


def _command(job: Job, workdir: Path, data_dir: str | None) -> str:
    cmd = f"python -m pruneax.experiments.{job.exp.name} --preset {job.preset}"
    cmd += f" --workdir {workdir}"
    if job.exp.needs_data and data_dir:
        cmd += f" --data_dir {data_dir}"
    return cmd


def _state(workdir: Path) -> dict[str, Any]:
    path = workdir / "reproduce.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save_state(workdir: Path, state: dict[str, Any]) -> None:
    lab.write_json(workdir / "reproduce.json", state)


def run(
    preset: str = "tiny",
    workdir: str | os.PathLike = "results/reproduce",
    data_dir: str | None = None,
    *,
    only: tuple[str, ...] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Runs (or resumes) the experiments and writes ``report.md`` / ``report.json``.

    Args:
      preset: ``"tiny"`` (digits, minutes on CPU), ``"cpu"`` or ``"gpu"``.
      workdir: output directory (created).
      data_dir: dataset root for the ``cpu`` / ``gpu`` presets (or ``PRUNEAX_DATA_DIR``).
      only: run only these experiments (names from ``EXPERIMENTS``).
      force: rerun experiments that already finished at this preset.

    Returns:
      The ``report.json`` dict.

    Raises:
      ValueError: for an unknown preset or experiment name.
    """
    if preset not in PRESETS:
        raise ValueError(f"reproduce: preset must be one of {PRESETS}; got {preset!r}")
    names = [e.name for e in EXPERIMENTS]
    if only is not None:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"reproduce: only must name experiments from {names}; got {unknown}")
    chosen = [e for e in EXPERIMENTS if only is None or e.name in only]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or os.environ.get("PRUNEAX_DATA_DIR")
    state = _state(workdir)
    started = time.perf_counter()
    todo = jobs(chosen, preset, data_dir)
    for i, job in enumerate(todo, 1):
        exp, sub = job.exp, workdir / job.key
        entry = state.get(job.key, {})
        tag = f"[reproduce] {i}/{len(todo)} {job.key} (preset {job.preset})"
        if entry.get("status") == "done" and entry.get("preset") == preset and not force:
            print(f"{tag}: finished earlier, not rerun", flush=True)
            continue
        print(f"{tag}: running into {sub}", flush=True)
        module, cfg = _experiment_config(job)
        t0 = time.perf_counter()
        clock = lab.CompileClock()
        try:
            with clock:
                if exp.needs_data:
                    module.run(cfg, sub, data_dir)
                else:
                    module.run(cfg, sub)
            status, error = "done", None
        except Exception as e:  # recorded in the report; the others still run
            traceback.print_exc()
            status, error = "failed", f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - t0
        state[job.key] = {
            "status": status,
            "preset": preset,
            "seconds": round(seconds, 1),
            "compile_seconds": round(clock.seconds, 1),
            "programs_compiled": clock.events,
            "error": error,
            "command": _command(job, sub, data_dir),
        }
        _save_state(workdir, state)
        print(f"{tag}: {status} in {seconds:.0f} s ({clock.seconds:.0f} s compiling)", flush=True)
    report = write_report(preset, workdir, data_dir, state, todo)
    total = time.perf_counter() - started
    print(
        f"[reproduce] wrote {workdir / 'report.md'} ({total:.0f} s); claims: "
        + ", ".join(f"{v} {k}" for k, v in report["verdicts"].items()),
        flush=True,
    )
    return report


# ------------------------------------------------------------------------- report


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def write_report(
    preset: str,
    workdir: Path,
    data_dir: str | None,
    state: dict[str, Any],
    todo: list[Job],
) -> dict[str, Any]:
    """Writes ``report.md`` and ``report.json`` from the runs' results files (``jobs``)."""
    sections, rows, claims_json = [], [], {}
    verdicts = {HOLDS: 0, FAILS: 0, NOISE: 0, NA: 0}
    for job in todo:
        exp, key = job.exp, job.key
        sub, entry = workdir / key, state.get(key, {})
        lines = [f"## {key}", "", exp.summary, ""]
        lines += [f"Command: `{entry.get('command', _command(job, sub, data_dir))}`"]
        if entry.get("seconds") is not None:
            compiling = entry.get("compile_seconds")
            spent = f" ({compiling:.0f} s of it compiling)" if compiling is not None else ""
            lines += [f"Wall time here: {entry['seconds']:.0f} s{spent}.", ""]
        results_path = sub / "results.json"
        if entry.get("status") != "done" or not results_path.exists():
            lines += [f"**Not completed**: {entry.get('error') or 'not run'}.", ""]
            sections.append("\n".join(lines))
            claims_json[key] = {"status": entry.get("status", "not run")}
            continue
        try:
            claims = exp.claims(json.loads(results_path.read_text()))
        except Exception as e:  # a results format this reader does not know
            claims = [Claim("-", "reading the claims", f"{type(e).__name__}: {e}", NA)]
        claims_json[key] = {
            "status": "done",
            "claims": [dataclasses.asdict(c) for c in claims],
        }
        lines += ["", "| paper | claim | measured | verdict |", "|---|---|---|---|"]
        for c in claims:
            verdicts[c.verdict] = verdicts.get(c.verdict, 0) + 1
            cells = (c.paper, c.claim, c.measured, f"**{c.verdict}**")
            lines.append("| " + " | ".join(_md_escape(x) for x in cells) + " |")
            rows.append((key, c))
        lines.append("")
        tables = sub / "results.md"
        if tables.exists():
            body = tables.read_text().strip().splitlines()
            body = [("#### " + ln.lstrip("#").strip()) if ln.startswith("#") else ln for ln in body]
            lines += ["### Tables", "", *body, ""]
        for png in sorted(sub.glob("*.png")):
            lines += [f"![{key}: {png.stem}]({key}/{png.name})", ""]
        sections.append("\n".join(lines))

    machine, versions = lab.machine(), lab.versions()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = f"python -m pruneax.experiments.reproduce --preset {preset} --workdir {workdir}"
    if data_dir:
        command += f" --data_dir {data_dir}"
    head = [
        f"# pruneax reproduction report (preset `{preset}`)",
        "",
        f"Generated {stamp} by `{command}`.",
        "",
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, JAX backend "
        f"`{machine['backend']}` ({len(machine['devices'])} device(s)).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
    ]
    if preset == "tiny":
        head += [
            "> Preset `tiny`: every model is trained for seconds on scikit-learn's 8x8 digits and "
            "evaluated on 200-360 test images. The verdicts below check that each pipeline runs "
            "end to end and that the comparisons are computed; they are not evidence for or "
            "against the papers. Run `--preset cpu --data_dir DIR` (MNIST; 1-2 hours on a 2-core "
            "CPU) or `--preset gpu` for that; BUILD_NOTES.md records those runs.",
            "",
        ]
    head += [
        "Verdicts: a comparison of two accuracies on n test images **holds** when the "
        "difference exceeds two standard errors (sqrt(2 p (1 - p) / n); unpaired, so "
        "conservative: both sides are measured on the same images), **does not hold** when "
        "it is that far the other way, and is **within noise** otherwise; a 'matches' claim "
        "holds unless it is worse by more than two standard errors.",
        "",
        "## Claims",
        "",
        "| experiment | paper | claim | verdict |",
        "|---|---|---|---|",
    ]
    for name, c in rows:
        head.append(f"| {name} | {_md_escape(c.paper)} | {_md_escape(c.claim)} | {c.verdict} |")
    head.append("")
    lab.write_text(workdir / "report.md", "\n".join(head + sections))
    report = {
        "preset": preset,
        "command": command,
        "generated": stamp,
        "machine": machine,
        "versions": versions,
        "experiments": {k: {**state.get(k, {}), **v} for k, v in claims_json.items()},
        "verdicts": {k: v for k, v in verdicts.items() if v},
    }
    lab.write_json(workdir / "report.json", report)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--workdir", default="results/reproduce")
    common.add_distributed_flags(parser)
    parser.add_argument("--data_dir", default=None, help="dataset root (cpu / gpu presets)")
    names = ",".join(e.name for e in EXPERIMENTS)
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {names}")
    parser.add_argument("--force", action="store_true", help="rerun finished experiments")
    common.add_cache_flag(parser)
    args = parser.parse_args(argv)
    common.start_distributed(args)
    common.use_cache_flag(args)
    only = tuple(s for s in args.only.split(",") if s) if args.only else None
    report = run(args.preset, args.workdir, args.data_dir, only=only, force=args.force)
    failed = [k for k, v in report["experiments"].items() if v.get("status") != "done"]
    if failed:
        print(f"[reproduce] FAILED: {', '.join(failed)}", file=sys.stderr, flush=True)
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
