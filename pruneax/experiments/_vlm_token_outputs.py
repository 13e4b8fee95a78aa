"""The outputs of ``pruneax.experiments.vlm_token_pruning``: its ``results.md`` tables and its
plots (accuracy by keep ratio, accuracy against prefill FLOPs, latency, and the visual tokens that
reach the last LLM layer)."""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from pruneax.experiments import _common as common

if TYPE_CHECKING:
    from pruneax.experiments.vlm_token_pruning import Job

# the question families in the order of their integer codes (the experiment imports them)
FAMILIES = ("locate", "count", "exists")


def tables(results: dict[str, Any]) -> str:
    cfg, evals, lat = results["config"], results["evals"], results["latency"]
    d = evals["dense"]
    lines = [
        f"Dense accuracy {d['accuracy']:.4f} (" + ", ".join(
            f"{f} {d[f'acc_{f}']:.4f}" for f in FAMILIES
        ) + f"); {cfg['eval_size']} questions. Latency batch {cfg['eval_batch']}; "
        f"machine: {results['machine']['devices']}",
        "",
    ]  # fmt: skip
    names = [n for n in evals if n != "dense"]
    methods = list(dict.fromkeys(evals[n]["method"] for n in names))
    ratios = cfg["keep_ratios"]
    for metric, title in (
        ("accuracy", "Accuracy (all families)"),
        ("acc_locate", "Accuracy, locate (which digit is in cell i)"),
        ("acc_count", "Accuracy, count"),
        ("acc_exists", "Accuracy, exists"),
        ("cell_hit_rate", "Cell hit rate (locate: a kept token lies in the asked cell)"),
        ("kept_row_mean", "Mean normalised row of the kept tokens (0 top, 1 bottom)"),
    ):
        lines += [f"### {title}", "", "| method | " + " | ".join(f"keep {r}" for r in ratios)
                  + " |", "|---" * (len(ratios) + 1) + "|"]  # fmt: skip
        lines.append("| dense | " + " | ".join(f"{d[metric]:.4f}" for _ in ratios) + " |")
        for m in methods:
            cells = []
            for r in ratios:
                e = next((evals[n] for n in names if evals[n]["method"] == m
                          and evals[n]["ratio"] == r), None)  # fmt: skip
                cells.append(f"{e[metric]:.4f}" if e is not None else "n/a")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "### Prefill FLOPs (projector + LLM) and measured latency",
        "",
        "| setting | visual tokens at last layer | FLOPs ratio | prefill ms | prefill speed-up "
        "| decode ms/token | decode speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, e in evals.items():
        t = lat.get(n)
        if t is None:
            continue
        lines.append(
            f"| {n} | {e['visual_tokens_last_layer']:.1f} | {e['flops_ratio']:.3f} | "
            f"{1e3 * t['prefill_s']:.2f} | {t['prefill_speedup']:.2f} | "
            f"{1e3 * t['decode_token_s']:.3f} | {t['decode_speedup']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _series(results, metric):
    evals, cfg = results["evals"], results["config"]
    out: dict[str, list[tuple[float, float]]] = {}
    for n, e in evals.items():
        if n == "dense":
            continue
        out.setdefault(e["method"], []).append((e["ratio"], e[metric]))
    return {m: sorted(v) for m, v in out.items() if v}, cfg


def _style(m: str, i: int, plt, results: dict[str, Any]):
    """Dashed: the random baselines; dotted: in-LLM methods (kind "llm") and FastV combinations."""
    in_llm = any(e["method"] == m and e["kind"] == "llm" for e in results["evals"].values())
    ls = "--" if m in ("random", "uniform") else (":" if "fastv" in m or in_llm else "-")
    return dict(ls=ls, marker="o", color=plt.cm.tab20(i % 20), label=m)


def plot_accuracy(results: dict[str, Any], path: pathlib.Path) -> None:
    plt = common.pyplot()
    panels = ("accuracy", *(f"acc_{f}" for f in FAMILIES), "cell_hit_rate")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, metric in zip(axes[0], panels, strict=True):
        series, _ = _series(results, metric)
        for i, (m, pts) in enumerate(series.items()):
            ax.plot(*zip(*pts, strict=True), **_style(m, i, plt, results))
        ax.axhline(results["evals"]["dense"][metric], color="k", lw=0.8, ls=":", label="dense")
        ax.set_xscale("log")
        ax.set_xlabel("fraction of visual tokens kept")
        ax.set_title(metric)
        ax.invert_xaxis()
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    common.save_figure(fig, path, dpi=100)


def plot_flops(results: dict[str, Any], path: pathlib.Path) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    methods = list(dict.fromkeys(e["method"] for e in results["evals"].values()))
    for i, m in enumerate(methods):
        pts = sorted(
            (e["flops_ratio"], e["accuracy"]) for e in results["evals"].values()
            if e["method"] == m
        )  # fmt: skip
        ax.plot(*zip(*pts, strict=True), **_style(m, i, plt, results))
    ax.set_xscale("log")
    ax.set_xlabel("prefill FLOPs / dense (projector + LLM)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    common.save_figure(fig, path, dpi=100)


def plot_latency(results: dict[str, Any], path: pathlib.Path) -> None:
    plt = common.pyplot()
    lat = results["latency"]
    names = list(lat)
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.25 * len(names)), 7), sharex=True)
    x = np.arange(len(names))
    axes[0].bar(x, [1e3 * lat[n]["prefill_s"] for n in names])
    axes[0].set_ylabel("prefill ms")
    axes[1].bar(x, [1e3 * lat[n]["decode_token_s"] for n in names], color="tab:orange")
    axes[1].set_ylabel("decode ms / token")
    axes[1].set_xticks(x, names, rotation=90, fontsize=6)
    fig.tight_layout()
    common.save_figure(fig, path, dpi=100)


def plot_kept(job: Job, params, ev, all_settings, path: pathlib.Path) -> None:
    """Which visual tokens reach the last LLM layer, for a few locate questions."""
    plt = common.pyplot()
    cfg, vcfg = job.cfg, job.vcfg
    r = sorted(cfg.keep_ratios)[len(cfg.keep_ratios) // 2]
    chosen = [s for s in all_settings if s.ratio == r and s.kind != "dense"]
    loc = np.flatnonzero(ev["family"] == FAMILIES.index("locate"))[:3]
    sub = {k: v[loc] for k, v in ev.items()}
    sub = {k: np.concatenate([v, np.repeat(v[-1:], cfg.eval_batch - len(v), 0)]) for k, v in
           sub.items()}  # fmt: skip
    images, prefix, question, _ = job._eval_batch(sub, slice(0, cfg.eval_batch))
    shown = np.asarray(images)[: len(loc)]
    shown = (shown - shown.min()) / (shown.max() - shown.min() + 1e-9)
    rows, cols = vcfg.vision.grid
    p = vcfg.vision.patch_size
    fig, axes = plt.subplots(
        len(loc), len(chosen) + 1, figsize=(1.2 * (len(chosen) + 1), 1.35 * len(loc)),
        squeeze=False,
    )  # fmt: skip
    v = job.vocab
    for col, s in enumerate([None, *chosen]):
        kept = None
        if s is not None:
            _, _, kept, _ = job.prefill(
                params, images, prefix, question, jax.random.key(0), select=s.select,
                prune=s.prune, max_len=job.max_len(s),
            )  # fmt: skip
            kept = np.asarray(kept)
        for row in range(len(loc)):
            ax = axes[row, col]
            img = shown[row, ..., 0]
            if kept is not None:
                mask = np.zeros(rows * cols, bool)
                mask[kept[row][kept[row] >= 0]] = True
                mask = np.kron(mask.reshape(rows, cols), np.ones((p, p), bool))
                img = np.where(mask, img, img * 0.2)
            ax.imshow(img, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("input" if s is None else s.method, fontsize=6)
            if col == 0:
                q = question[row]
                ax.set_ylabel(v.names[q[1]], fontsize=6)
    fig.suptitle(f"visual tokens reaching the last LLM layer (bright), keep {r}", fontsize=8)
    fig.tight_layout()
    common.save_figure(fig, path, dpi=100)
