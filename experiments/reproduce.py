"""Every pruneax experiment at one preset, and one report that sets each paper's claim beside
the measured result.

Run (the README's main job; a few minutes on a 2-core CPU, no download: scikit-learn's bundled
digits):

    python -m experiments.reproduce --workdir results/reproduce

The full presets (MNIST / CIFAR-10 read from a directory, see ``pruneax.data``):

    python -m experiments.reproduce --preset cpu --workdir runs/cpu --data_dir ../shared/data
    python -m experiments.reproduce --preset gpu --workdir runs/gpu --data_dir DATA

Each experiment runs through its own importable ``run(config, workdir, ...)`` into
``WORKDIR/<experiment>/`` (so ``python -m experiments.<experiment> --preset P --workdir
WORKDIR/<experiment>`` reproduces one of them alone), then ``WORKDIR/report.md`` collects the
claims table, every experiment's tables and plots, the machine, the package versions and the
commands; ``WORKDIR/report.json`` holds the same claims as data.

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
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pruneax import lab

PRESETS = ("tiny", "cpu", "gpu")
HOLDS, FAILS, NOISE, NA = "holds", "does not hold", "within noise", "not measured"


@dataclasses.dataclass(frozen=True)
class Claim:
    """One paper claim beside what this run measured."""

    paper: str
    claim: str
    measured: str
    verdict: str  # HOLDS | FAILS | NOISE | NA


@dataclasses.dataclass(frozen=True)
class Experiment:
    """How ``reproduce`` runs one experiment and reads its claims back."""

    name: str
    presets: dict[str, str]  # reproduce preset -> the experiment's own preset
    needs_data: bool  # takes a data_dir (the model-free token demo does not)
    claims: Callable[[dict[str, Any]], list[Claim]]
    summary: str


# ------------------------------------------------------------------------- statistics


def test_images(config: dict[str, Any]) -> int:
    """The number of test images an experiment's accuracies were measured on."""
    full = {"digits": 360, "mnist": 10_000, "cifar10": 10_000}.get(config.get("dataset"), 0)
    eval_size = config.get("eval_size")
    return min(full, eval_size) if eval_size else full


def compare(a: float, b: float, n: int, *, more: bool = True) -> tuple[str, str]:
    """Verdict on "a > b" (``more``) or "a >= b - noise" (not ``more``) for two accuracies.

    Returns ``(verdict, text)``; the text gives the difference in points and 2 SE.
    """
    if not (math.isfinite(a) and math.isfinite(b)) or n <= 0:
        return NA, "-"
    p = min(max((a + b) / 2, 1e-3), 1 - 1e-3)
    two_se = 2 * math.sqrt(2 * p * (1 - p) / n)
    d = a - b
    text = f"{100 * a:.2f} vs {100 * b:.2f} ({100 * d:+.2f} pts; 2 SE = {100 * two_se:.2f}, n={n})"
    if more:
        verdict = HOLDS if d > two_se else FAILS if d < -two_se else NOISE
    else:  # "a is not worse than b"
        verdict = HOLDS if d >= -two_se else FAILS
    return verdict, text


# ------------------------------------------------------------------------- claims


def versus(
    paper: str,
    claim: str,
    a: dict[str, Any] | None,
    b: dict[str, Any] | None,
    n: int,
    where: str | Callable[[dict[str, Any], dict[str, Any]], str],
    *,
    key: str = "accuracy",
    key_b: str | None = None,
    more: bool = True,
) -> Claim:
    """The claim "a beats b" (``more``) or "a matches b" on ``a[key]`` vs ``b[key_b or key]``
    measured on ``n`` examples; "not measured" when either setting is missing. ``where``
    names the two settings (a callable gets both)."""
    if a is None or b is None:
        return Claim(paper, claim, "-", NA)
    verdict, numbers = compare(a[key], b[key_b or key], n, more=more)
    label = where(a, b) if callable(where) else where
    return Claim(paper, claim, f"{label}: {numbers}", verdict)


def _token_demo_claims(r: dict[str, Any]) -> list[Claim]:
    m = r["methods"]
    mass = {k: v["mean_score_mass"] for k, v in m.items()}
    dist = {k: v["mean_mean_dist"] for k, v in m.items()}
    claims = [
        Claim(
            "sanity check",
            "Top-k keeps the most score mass of any selector (true by construction: a check "
            "of the implementation, not of a paper)",
            f"score mass kept: topk {mass['topk']:.3f}; best other "
            f"{max(v for k, v in mass.items() if k != 'topk'):.3f}",
            HOLDS if mass["topk"] >= max(mass.values()) - 1e-6 else FAILS,
        )
    ]
    for name, paper in (("divprune", "DivPrune"), ("kcenter", "ToDRE (k-center)")):
        claims.append(
            Claim(
                paper,
                "Diversity selection covers the image better than attention top-k "
                "(distance from a patch to its nearest kept patch)",
                f"mean distance (patch widths): {name} {dist[name]:.3f} vs topk {dist['topk']:.3f}",
                HOLDS if dist[name] < dist["topk"] else FAILS,
            )
        )
    return claims


def _acc(results: list[dict[str, Any]], kind: str, rnd: int) -> float:
    v = [e["final_test_acc"] for e in results if e["kind"] == kind and e["round"] == rnd]
    return sum(v) / len(v) if v else float("nan")


def _lottery_claims(r: dict[str, Any]) -> list[Claim]:
    res = r["results"]
    n = test_images(r["config"]) * len(r["config"]["seeds"])
    last = max(e["round"] for e in res if e["kind"] == "imp")
    remaining = next(e["remaining"] for e in res if e["kind"] == "imp" and e["round"] == last)
    dense, imp = _acc(res, "imp", 0), _acc(res, "imp", last)
    where = f"at {remaining:.1f}% of weights remaining, round {last}"
    claims = []
    verdict, text = compare(imp, dense, n, more=False)
    claims.append(
        Claim(
            "Frankle & Carbin 2019 (LTH)",
            "IMP winning tickets (reset to the original init) match the dense network",
            f"ticket vs dense {where}: {text}",
            verdict,
        )
    )
    for kind, what in (("reinit", "randomly re-initialised"), ("random_prune", "randomly pruned")):
        other = _acc(res, kind, last)
        verdict, text = compare(imp, other, n)
        claims.append(
            Claim(
                "Frankle & Carbin 2019 (LTH)",
                f"Winning tickets beat the same architecture {what}",
                f"ticket vs {kind} {where}: {text}",
                verdict,
            )
        )
    return claims


def _pick(evals: dict[str, Any], method: str, *, smallest: bool) -> dict[str, Any] | None:
    """The eval of ``method`` at the smallest keep ratio (or the one nearest 0.5)."""
    rows = [e for e in evals.values() if e["method"] == method]
    if not rows:
        return None
    key = (lambda e: (e["ratio"], e["layer"])) if smallest else (lambda e: abs(e["ratio"] - 0.5))
    return min(rows, key=key)


def _vit_claims(r: dict[str, Any]) -> list[Claim]:
    ev, n = r["evals"], test_images(r["config"])

    def pair(paper, claim, a, b, smallest):
        ea = _pick(ev, a, smallest=smallest)
        eb = ev.get(f"{b}@L{ea['layer']}:{ea['ratio']}") if ea else None
        where = lambda x, _: f"{a} vs {b}, keep {x['ratio']} from block {x['layer']}"
        return versus(paper, claim, ea, eb, n, where)

    aggressive = "beats attention top-k at aggressive budgets"
    claims = [
        pair("EViT / FasterVLM", "Attention top-k beats random selection", "topk", "random", False),
        pair("DivPrune", f"Diversity {aggressive}", "divprune", "topk", True),
        pair("MMTok", f"Coverage {aggressive}", "coverage", "topk", True),
        pair("EViT", "Fusing the pruned tokens beats dropping them", "evit", "topk", True),
    ]
    tp = {k: v for k, v in r["throughput"].items() if "efficiency" in v}
    if tp:
        eff = sorted(v["efficiency"] for v in tp.values())
        med = eff[len(eff) // 2]
        claims.append(
            Claim(
                "EViT / ToMe",
                "Fewer tokens give a real speed-up close to the FLOPs reduction",
                f"median realised / ideal speed-up over {len(eff)} methods: {med:.2f} "
                f"(range {eff[0]:.2f}-{eff[-1]:.2f}); target >= 0.85",
                HOLDS if med >= 0.85 else FAILS,
            )
        )
    for name, ft in r.get("finetune", {}).items():
        claims.append(
            versus(
                "EViT / DynamicViT",
                "Fine-tuning with the pruning in the loop recovers accuracy",
                ft,
                ft,
                n,
                f"{name} after {ft['steps']} steps vs training-free",
                key="accuracy_finetuned",
                key_b="accuracy_training_free",
            )
        )
    return claims


def _ssm_claims(r: dict[str, Any]) -> list[Claim]:
    ev, n = r["evals"], test_images(r["config"])
    name = r["schedules"]["main"]["name"]
    gap = f"{r['ablation_mode']}@{name}"
    dense, naive = ev["dense"], ev.get(f"naive@{name}")
    aligned, exact = ev.get(gap), ev.get(f"aligned_exact@{name}")
    ft = r.get("finetune", {})
    paper = "ToP-ViM (Zhan et al. 2024)"
    return [
        versus(
            paper,
            "Naive token pruning breaks a vision SSM (dense beats naive clearly)",
            dense,
            naive,
            n,
            lambda a, b: f"dense vs naive at {b['flops_ratio']:.2f}x FLOPs",
        ),
        versus(
            paper,
            "Pruning-aware hidden-state alignment beats naive pruning at the same FLOPs",
            aligned,
            naive,
            n,
            lambda a, b: (
                f"{gap} vs naive ({a['flops_ratio']:.2f}x vs {b['flops_ratio']:.2f}x FLOPs)"
            ),
        ),
        versus(
            paper,
            "The cheap gap-decay alignment matches exact alignment",
            aligned,
            exact,
            n,
            f"{gap} vs aligned_exact",
            more=False,
        ),
        versus(
            paper,
            "After fine-tuning, aligned pruning still beats naive pruning",
            ft.get(gap),
            ft.get(f"naive@{name}"),
            n,
            lambda a, b: f"{gap} vs naive after {a['steps']} steps",
            key="accuracy_finetuned",
        ),
    ]


def _vlm_claims(r: dict[str, Any]) -> list[Claim]:
    ev, cfg = r["evals"], r["config"]
    n = cfg["eval_size"]  # questions; the three families in equal numbers
    ratios = sorted(cfg["keep_ratios"])

    def pair(paper, claim, a, b, *, largest=False, metric="accuracy", more=True):
        # the smallest (or largest) budget at which both settings were evaluated (FEATHER,
        # e.g., cannot keep a single token)
        key = lambda m, x: m if m == "dense" else f"{m}@{x}"
        both = [x for x in ratios if key(a, x) in ev and key(b, x) in ev]
        x = (both[-1] if largest else both[0]) if both else None
        ea, eb = (ev[key(a, x)], ev[key(b, x)]) if both else (None, None)
        size = n if metric == "accuracy" else n // 3
        where = f"{metric}, {key(a, x)} vs {key(b, x)}"
        return versus(paper, claim, ea, eb, size, where, key=metric, more=more)

    return [
        pair(
            "FastV",
            "Pruning image tokens after LLM layer K (largest budget run) keeps the accuracy",
            "fastv",
            "dense",
            largest=True,
            more=False,
        ),
        pair(
            "MMTok",
            "Text-guided coverage beats vision-only coverage at a small budget",
            "coverage",
            "coverage_vision",
        ),
        pair(
            "DivPrune",
            "Diversity beats CLS-attention top-k at a small budget",
            "divprune",
            "fastervlm",
        ),
        pair(
            "FEATHER",
            "Uniform sampling repairs the localisation that attention-based in-LLM pruning loses",
            "feather",
            "fastv",
            metric="acc_locate",
        ),
    ]


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "token_demo",
        {"tiny": "default", "cpu": "default", "gpu": "default"},
        False,
        _token_demo_claims,
        "Every pruneax.tokens selector on real digit images (model-free stand-in scores).",
    ),
    Experiment(
        "lottery_ticket",
        {"tiny": "tiny", "cpu": "cpu", "gpu": "gpu"},
        True,
        _lottery_claims,
        "Iterative magnitude pruning with rewinding: winning tickets vs re-initialised and "
        "randomly pruned baselines.",
    ),
    Experiment(
        "vit_token_pruning",
        {"tiny": "tiny", "cpu": "cpu", "gpu": "gpu"},
        True,
        _vit_claims,
        "A ViT trained once, then every token-pruning method at several keep ratios and "
        "layers; a fine-tune with pruning in the loop; throughput vs FLOPs.",
    ),
    Experiment(
        "ssm_token_pruning",
        {"tiny": "tiny", "cpu": "cpu", "gpu": "gpu"},
        True,
        _ssm_claims,
        "Vision Mamba (Vim) token pruning: naive vs hidden-state alignment (ToP-ViM).",
    ),
    Experiment(
        "vlm_token_pruning",
        {"tiny": "tiny", "cpu": "cpu", "gpu": "gpu"},
        True,
        _vlm_claims,
        "A small LLaVA-style VLM trained on MNIST-mosaic VQA; every pre-LLM and in-LLM "
        "visual-token pruning method at several budgets: accuracy per question type, FLOPs, "
        "prefill and decode latency.",
    ),
)


# ------------------------------------------------------------------------- running


def _experiment_config(exp: Experiment, preset: str) -> Any:
    module = importlib.import_module(f"experiments.{exp.name}")
    return module, module.PRESETS[exp.presets[preset]]


def _command(exp: Experiment, preset: str, workdir: Path, data_dir: str | None) -> str:
    cmd = f"python -m experiments.{exp.name} --preset {exp.presets[preset]} --workdir {workdir}"
    if exp.needs_data and data_dir:
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
    for i, exp in enumerate(chosen, 1):
        sub = workdir / exp.name
        entry = state.get(exp.name, {})
        tag = f"[reproduce] {i}/{len(chosen)} {exp.name} (preset {exp.presets[preset]})"
        if entry.get("status") == "done" and entry.get("preset") == preset and not force:
            print(f"{tag}: finished earlier, not rerun", flush=True)
            continue
        print(f"{tag}: running into {sub}", flush=True)
        module, cfg = _experiment_config(exp, preset)
        t0 = time.perf_counter()
        try:
            if exp.needs_data:
                module.run(cfg, sub, data_dir)
            else:
                module.run(cfg, sub)
            status, error = "done", None
        except Exception as e:  # recorded in the report; the others still run
            traceback.print_exc()
            status, error = "failed", f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - t0
        state[exp.name] = {
            "status": status,
            "preset": preset,
            "seconds": round(seconds, 1),
            "error": error,
            "command": _command(exp, preset, sub, data_dir),
        }
        _save_state(workdir, state)
        print(f"{tag}: {status} in {seconds:.0f} s", flush=True)
    report = write_report(preset, workdir, data_dir, state, chosen)
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
    chosen: list[Experiment],
) -> dict[str, Any]:
    """Writes ``report.md`` and ``report.json`` from the experiments' results files."""
    sections, rows, claims_json = [], [], {}
    verdicts = {HOLDS: 0, FAILS: 0, NOISE: 0, NA: 0}
    for exp in chosen:
        sub, entry = workdir / exp.name, state.get(exp.name, {})
        lines = [f"## {exp.name}", "", exp.summary, ""]
        lines += [f"Command: `{entry.get('command', _command(exp, preset, sub, data_dir))}`"]
        if entry.get("seconds") is not None:
            lines += [f"Wall time here: {entry['seconds']:.0f} s.", ""]
        results_path = sub / "results.json"
        if entry.get("status") != "done" or not results_path.exists():
            lines += [f"**Not completed**: {entry.get('error') or 'not run'}.", ""]
            sections.append("\n".join(lines))
            claims_json[exp.name] = {"status": entry.get("status", "not run")}
            continue
        try:
            claims = exp.claims(json.loads(results_path.read_text()))
        except Exception as e:  # a results format this reader does not know
            claims = [Claim("-", "reading the claims", f"{type(e).__name__}: {e}", NA)]
        claims_json[exp.name] = {
            "status": "done",
            "claims": [dataclasses.asdict(c) for c in claims],
        }
        lines += ["", "| paper | claim | measured | verdict |", "|---|---|---|---|"]
        for c in claims:
            verdicts[c.verdict] = verdicts.get(c.verdict, 0) + 1
            cells = (c.paper, c.claim, c.measured, f"**{c.verdict}**")
            lines.append("| " + " | ".join(_md_escape(x) for x in cells) + " |")
            rows.append((exp.name, c))
        lines.append("")
        tables = sub / "results.md"
        if tables.exists():
            body = tables.read_text().strip().splitlines()
            body = [("#### " + ln.lstrip("#").strip()) if ln.startswith("#") else ln for ln in body]
            lines += ["### Tables", "", *body, ""]
        for png in sorted(sub.glob("*.png")):
            lines += [f"![{exp.name}: {png.stem}]({exp.name}/{png.name})", ""]
        sections.append("\n".join(lines))

    machine, versions = lab.machine(), lab.versions()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = f"python -m experiments.reproduce --preset {preset} --workdir {workdir}"
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
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: call jax.distributed.initialize() first (TPU pods)",
    )
    parser.add_argument("--data_dir", default=None, help="dataset root (cpu / gpu presets)")
    names = ",".join(e.name for e in EXPERIMENTS)
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {names}")
    parser.add_argument("--force", action="store_true", help="rerun finished experiments")
    args = parser.parse_args(argv)
    if args.distributed:
        from experiments import _parallel as par

        par.initialize_distributed()
    only = tuple(s for s in args.only.split(",") if s) if args.only else None
    report = run(args.preset, args.workdir, args.data_dir, only=only, force=args.force)
    failed = [k for k, v in report["experiments"].items() if v.get("status") != "done"]
    if failed:
        print(f"[reproduce] FAILED: {', '.join(failed)}", file=sys.stderr, flush=True)
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
