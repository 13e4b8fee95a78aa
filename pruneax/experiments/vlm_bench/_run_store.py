"""The runner's workdir: ``config.json`` (one run per workdir; settings may be added),
``predictions/<setting>.jsonl`` (one line per finished item, appended per batch with flush +
fsync, read back on restart), and the final ``results.json`` / ``results.csv`` / plots, written
atomically with ``pruneax.lab``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pruneax import lab

CONFIG = "config.json"


def check_config(
    workdir: Path, config: Mapping[str, Any], settings: Sequence[str], *, write: bool = True
) -> None:
    """Saves ``config`` (+ ``settings``) once; a different config later is a ValueError.

    Settings of a new run are added to the saved list (the other keys must be equal).
    ``write=False`` only checks.

    Raises:
      ValueError: if ``workdir`` holds a run with a different config.
    """
    path = workdir / CONFIG
    cfg = json.loads(json.dumps(dict(config)))
    if path.exists():
        saved = json.loads(path.read_text())
        old = {k: v for k, v in saved.items() if k != "settings"}
        if old != cfg:
            diff = sorted(k for k in set(old) | set(cfg) if old.get(k) != cfg.get(k))
            raise ValueError(
                f"workdir {str(workdir)!r} holds a run with a different config (differs in "
                f"{diff}); use a new workdir or the same options"
            )
        names = list(dict.fromkeys([*saved.get("settings", []), *settings]))
    else:
        names = list(settings)
    if write:
        lab.write_json(path, {**cfg, "settings": names})


def predictions_path(workdir: Path, name: str) -> Path:
    """The JSONL of a setting (``@`` and ``/`` made file-safe)."""
    safe = name.replace("/", "_").replace("@", "_at_")
    return workdir / "predictions" / f"{safe}.jsonl"


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """``{id: record}`` of a setting's JSONL; a torn last line (a crash mid-write) is cut off
    the file so that appending continues cleanly."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    good = data.rfind(b"\n") + 1
    if good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    out: dict[str, dict[str, Any]] = {}
    for line in data[:good].decode().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[rec["id"]] = rec
    return out


def append_predictions(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Appends one JSON line per record, flushed and fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


CSV_FIELDS = ("setting", "method", "keep", "visual_tokens", "retained_tokens", "main",
              "prefill_flops", "prefill_latency_s", "items")  # fmt: skip


def write_results(workdir: Path, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]):
    """``results.json`` (meta + rows), ``results.csv`` (one row per setting) and the plots."""
    lab.write_json(workdir / "results.json", {**meta, "results": list(rows)})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    lab.write_text(workdir / "results.csv", buf.getvalue())
    return write_plots(workdir, rows, str(meta.get("benchmark", "")))


PLOTS = {
    "retained_tokens": ("score_vs_tokens.png", "visual tokens reaching the last LLM layer"),
    "prefill_flops": ("score_vs_flops.png", "prefill FLOPs per example"),
    "prefill_latency_s": ("score_vs_latency.png", "measured prefill latency (s, one batch)"),
}


def write_plots(workdir: Path, rows: Sequence[Mapping[str, Any]], title: str) -> list[Path]:
    """One plot per x axis of ``PLOTS``: the main score per method against it (a line per
    method over its budgets), dense ("none") as a horizontal line. Axes without values are
    skipped. Written atomically (temporary file + rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    dense = [r for r in rows if r["method"] == "none"]
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "none"))
    for key, (fname, label) in PLOTS.items():
        pts = [r for r in rows if r.get(key) is not None and r.get("main") is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in methods:
            mine = sorted((r[key], r["main"]) for r in pts if r["method"] == m)
            if mine:
                ax.plot(*zip(*mine, strict=True), marker="o", label=m)
        for r in dense:
            if r.get("main") is not None:
                ax.axhline(r["main"], color="k", linestyle="--", label="dense")
        ax.set_xlabel(label)
        ax.set_ylabel("main score")
        ax.set_title(title)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = workdir / fname
        tmp = workdir / f".{fname}.tmp.png"
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, path)
        paths.append(path)
    return paths
