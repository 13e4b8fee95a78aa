"""Every pruneax.tokens selector on real images: upscaled scikit-learn digits.

Run (default: 6 images, 48 x 48, 4 x 4 patches = 144 tokens, keep 25%; < 1 min on 2 CPU cores):

    python -m pruneax.experiments.token_demo --workdir /tmp/token_demo

Smoke test (2 images, 32 x 32 = 64 tokens; < 15 s):

    python -m pruneax.experiments.token_demo --workdir /tmp/token_demo --preset tiny

Writes ``DIR/token_demo.png`` (one row per image, one column per selector; kept patches shown
normally, dropped patches darkened) and ``DIR/results.json`` (config, kept indices per method and
image, statistics), and prints a table.

MODEL-FREE. No neural network is involved (models come later), so the token features and scores
are honest hand-made stand-ins computed from the pixels, not from any encoder:

- features [N, p*p + 4F]: the flattened patch pixels (intensity in [0, 1]) concatenated with a
  2-D sin-cos code of the patch centre (F frequencies per axis, times ``pos_weight``), so the
  diversity and coverage selectors see both content and position;
- ``score`` (stand-in for [CLS] / last-query attention; used by topk, feather, holov and as the
  kcenter / maxsum pivot): ``softmax_N(patch mean intensity / temperature)``;
- HiPrune ``shallow`` (the "object" layer that places anchors): ``softmax_N`` of the patch-mean
  map blurred by a 3 x 3 binomial kernel, over ``temperature`` - it peaks inside the digit's
  mass; HiPrune ``deep`` (registers): ``softmax_N`` of the patch contrast (standard deviation of
  its pixels) over ``temperature`` - it peaks on stroke edges;
- MMTok ``coverage`` runs vision-only (``text=None``) on the features.

Statistics per method (means over images): ``score_mass`` = kept share of ``score`` (topk is
optimal for it by construction); ``mean_dist`` = mean distance, in patch widths, from every patch
centre to the nearest kept patch centre (lower = better spatial coverage); ``on_digit`` =
fraction of kept patches whose mean intensity exceeds ``digit_threshold``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import pruneax.tokens as T
from pruneax import lab
from pruneax.experiments import _common as common


@dataclasses.dataclass(frozen=True)
class Config:
    """Demo settings. ``PRESETS`` holds ``default`` and ``tiny`` (the smoke test)."""

    num_images: int = 6  # one per class 0, 1, 2, ... (cycling), from the held-out half
    size: int = 48  # 8 x 8 digits upscaled bilinearly to size x size
    patch: int = 4  # non-overlapping patch side; size % patch == 0
    keep: float = 0.25  # keep ratio; k = pruneax.tokens.budget(N, keep)
    temperature: float = 0.1  # softmax temperature of the stand-in scores (inputs in [0, 1])
    pos_freqs: int = 2  # sin-cos frequencies per axis: pi * 2**f, f < pos_freqs
    pos_weight: float = 1.0  # scale of the positional part of the features
    digit_threshold: float = 0.25  # patch mean intensity above which a patch is "on the digit"
    seed: int = 0  # key of the random selector
    hiprune_alpha: float = 0.1  # HiPrune's share of the budget for anchors + buffers (paper)
    feather_stride: int = 3  # FEATHER's uniform grid stride (paper)
    holov_chunks: int | None = None  # HoloV raster chunks; None: one chunk per patch row


PRESETS = {
    "default": Config(),
    "tiny": Config(num_images=2, size=32),
}

# Every selector of the registry (pruneax.tokens.METHODS): a method registered there is in the demo.
METHODS = tuple(T.METHODS)


class Tokens(NamedTuple):
    """One image's model-free tokens (a batch when every field has a leading [B] axis)."""

    features: jax.Array  # [N, D] float32
    score: jax.Array  # [N] attention stand-in, sums to 1
    shallow: jax.Array  # [N] HiPrune object-layer stand-in
    deep: jax.Array  # [N] HiPrune deep-layer stand-in
    intensity: jax.Array  # [N] patch mean intensity in [0, 1]
    key: jax.Array  # typed PRNG key for the random selector


def load_images(config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits from the second (held-out) half of sklearn's set, classes 0, 1, 2, ... in turn.

    Returns:
      ``(images [B, 8, 8] float32 in [0, 1], labels [B], dataset indices [B])``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    start = len(digits.target) // 2
    picked = []
    for i in range(config.num_images):
        label, occurrence = i % 10, i // 10
        hits = start + np.flatnonzero(digits.target[start:] == label)
        picked.append(int(hits[occurrence]))
    idx = np.asarray(picked)
    images = digits.images[idx].astype(np.float32) / 16.0
    return images, digits.target[idx], idx


def upscale(images: jax.Array, size: int) -> jax.Array:
    """[B, h, w] -> [B, size, size], bilinear (``jax.image.resize``), clipped to [0, 1]."""
    out = jax.image.resize(images, (images.shape[0], size, size), method="bilinear")
    return jnp.clip(out, 0.0, 1.0)


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """[B, H, W] -> [B, (H/p)(W/p), p*p] non-overlapping patches in raster order."""
    b, h, w = images.shape
    r, c = h // patch, w // patch
    x = images.reshape(b, r, patch, c, patch).transpose(0, 1, 3, 2, 4)
    return x.reshape(b, r * c, patch * patch)


def sincos_2d(grid: tuple[int, int], num_freqs: int) -> np.ndarray:
    """[rows * cols, 4 * num_freqs] sin / cos of each patch centre at frequencies pi * 2**f."""
    rows, cols = grid
    yy, xx = np.meshgrid(
        (np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij"
    )
    freqs = np.pi * 2.0 ** np.arange(num_freqs)
    ay = yy.reshape(-1, 1) * freqs
    ax = xx.reshape(-1, 1) * freqs
    return np.concatenate([np.sin(ay), np.cos(ay), np.sin(ax), np.cos(ax)], -1).astype(np.float32)


def make_tokens(images: jax.Array, config: Config, key: jax.Array) -> Tokens:
    """Model-free tokens of upscaled images [B, H, W] (see the module docstring)."""
    b = images.shape[0]
    rows = cols = config.size // config.patch
    pixels = patchify(images, config.patch)  # [B, N, p*p]
    intensity = pixels.mean(-1)
    contrast = pixels.std(-1)
    pos = jnp.asarray(sincos_2d((rows, cols), config.pos_freqs)) * config.pos_weight
    features = jnp.concatenate([pixels, jnp.broadcast_to(pos, (b, *pos.shape))], -1)
    kernel = jnp.outer(jnp.array([1.0, 2.0, 1.0]), jnp.array([1.0, 2.0, 1.0])) / 16.0
    blur = jax.vmap(lambda m: jax.scipy.signal.convolve2d(m, kernel, mode="same"))
    blurred = blur(intensity.reshape(b, rows, cols)).reshape(b, rows * cols)
    t = config.temperature
    return Tokens(
        features=features,
        score=jax.nn.softmax(intensity / t, axis=-1),
        shallow=jax.nn.softmax(blurred / t, axis=-1),
        deep=jax.nn.softmax(contrast / t, axis=-1),
        intensity=intensity,
        key=jax.random.split(key, b),
    )


def selectors(config: Config, grid: tuple[int, int], k: int) -> dict[str, Callable]:
    """Single-example selectors ``Tokens -> int32 [k]``, one per registered method, at budget
    ``k``. Every method gets the same stand-ins (``score`` as the attention scores, ``shallow`` /
    ``deep`` as HiPrune's layers) and the options set in the config."""
    options = {
        "hiprune": {"alpha": config.hiprune_alpha},
        "feather": {"stride": config.feather_stride},
        "holov": {"num_chunks": config.holov_chunks or grid[0]},
    }

    def make(name):
        def select(t: Tokens) -> jax.Array:
            return T.select_tokens(
                name,
                k,
                scores=t.score,
                features=t.features,
                shallow_scores=t.shallow,
                deep_scores=t.deep,
                grid=grid,
                key=t.key,
                **options.get(name, {}),
            )

        return select

    return {name: make(name) for name in METHODS}


def statistics(idx: np.ndarray, tokens: Tokens, grid: tuple[int, int], threshold: float) -> dict:
    """Per-image statistics of kept indices ``idx`` [B, k] (see the module docstring)."""
    score = np.asarray(tokens.score)
    intensity = np.asarray(tokens.intensity)
    rows, cols = grid
    centres = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1)
    centres = centres.reshape(-1, 2).astype(np.float64)
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)  # [N, N] in patch widths
    take = lambda a: np.take_along_axis(a, idx, axis=1)
    return {
        "score_mass": (take(score).sum(1) / score.sum(1)).tolist(),
        "mean_dist": [float(dist[:, i].min(1).mean()) for i in idx],
        "on_digit": (take(intensity) > threshold).mean(1).tolist(),
    }


def plot(
    path: Path, images: np.ndarray, labels, kept: dict, grid, k: int, config: Config, stats: dict
) -> None:
    """One row per image, one column per method; dropped patches darkened, kept outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows, cols = grid
    p = config.patch
    n_img, n_met = len(images), len(kept)
    fig, axes = plt.subplots(
        n_img, n_met, figsize=(1.75 * n_met, 1.95 * n_img + 1.3), squeeze=False
    )
    paper = 1.0 - images  # ink dark on white
    for j, (name, idx) in enumerate(kept.items()):
        axes[0, j].set_title(name, fontsize=10, fontweight="bold")
        for i in range(n_img):
            ax = axes[i, j]
            mask = np.zeros(rows * cols, bool)
            mask[idx[i]] = True
            pix = np.repeat(np.repeat(mask.reshape(rows, cols), p, 0), p, 1)
            rgb = np.repeat(paper[i][..., None], 3, -1)
            dropped = 0.3 * rgb + 0.7 * np.array([0.20, 0.22, 0.30])
            ax.imshow(np.where(pix[..., None], rgb, dropped), interpolation="nearest")
            for t in idx[i]:
                r, c = divmod(int(t), cols)
                ax.add_patch(
                    Rectangle(
                        (c * p - 0.5, r * p - 0.5),
                        p,
                        p,
                        fill=False,
                        edgecolor="tab:orange",
                        linewidth=0.6,
                    )
                )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(
                f"mass {stats[name]['score_mass'][i]:.2f}  dist {stats[name]['mean_dist'][i]:.2f}",
                fontsize=7,
            )
            if j == 0:
                ax.set_ylabel(f"digit {labels[i]}", fontsize=10)
    n = rows * cols
    fig.suptitle(
        f"pruneax.tokens selectors on sklearn digits ({config.size}x{config.size}, "
        f"{p}x{p} patches): keep k={k} of N={n} (bright, orange outline); dropped = dark\n"
        "MODEL-FREE stand-ins, no neural network: features = patch pixels + 2-D sin-cos position; "
        f"score = softmax(patch mean / {config.temperature:g})\n"
        "HiPrune shallow = blurred patch mean, deep = patch contrast; coverage vision-only. "
        "Under each panel: score mass kept, mean distance to nearest kept patch (patches)",
        fontsize=9,
    )
    fig.tight_layout()
    common.save_figure(fig, path, dpi=110)


def run(config: Config, workdir: str | Path) -> dict:
    """Runs every selector on the demo images; writes token_demo.png and results.json.

    Returns:
      The dict written to ``results.json``: ``config``, ``n``, ``k``, ``grid``, ``labels``,
      ``dataset_indices``, and per method ``indices`` [B][k], per-image statistics and their
      means, and ``seconds`` (jit compile included).

    Raises:
      ValueError: if ``size`` is not a multiple of ``patch``.
    """
    if config.size % config.patch:
        raise ValueError(f"size ({config.size}) must be a multiple of patch ({config.patch})")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    raw, labels, ds_idx = load_images(config)
    images = upscale(jnp.asarray(raw), config.size)
    grid = (config.size // config.patch,) * 2
    n = grid[0] * grid[1]
    k = T.budget(n, config.keep)
    tokens = make_tokens(images, config, jax.random.key(config.seed))
    print(
        f"[token_demo] {len(labels)} digits {labels.tolist()} -> {config.size}x{config.size}, "
        f"N={n} patches of {config.patch}x{config.patch}, keep k={k}, "
        f"D={tokens.features.shape[-1]} ({time.perf_counter() - t0:.1f}s)",
        flush=True,
    )

    kept, methods = {}, {}
    for name, select in selectors(config, grid, k).items():
        t1 = time.perf_counter()
        idx = np.asarray(jax.jit(jax.vmap(select))(tokens))
        seconds = time.perf_counter() - t1
        stats = statistics(idx, tokens, grid, config.digit_threshold)
        kept[name] = idx
        methods[name] = {
            "indices": idx.tolist(),
            **stats,
            **{f"mean_{s}": float(np.mean(v)) for s, v in stats.items()},
            "seconds": seconds,
        }
        print(f"[token_demo] {name:<17s} done in {seconds:.2f}s", flush=True)

    png = workdir / "token_demo.png"
    plot(png, np.asarray(images), labels.tolist(), kept, grid, k, config, methods)
    results = {
        "config": dataclasses.asdict(config),
        "n": n,
        "k": k,
        "grid": list(grid),
        "labels": labels.tolist(),
        "dataset_indices": ds_idx.tolist(),
        "methods": methods,
    }
    lab.write_json(workdir / "results.json", results)

    print(f"\n{'method':<17s} {'score_mass':>10s} {'mean_dist':>9s} {'on_digit':>8s} {'s':>6s}")
    for name, m in methods.items():
        print(
            f"{name:<17s} {m['mean_score_mass']:>10.3f} {m['mean_mean_dist']:>9.3f} "
            f"{m['mean_on_digit']:>8.3f} {m['seconds']:>6.2f}"
        )
    print(
        f"\n[token_demo] wrote {png} and {workdir / 'results.json'} "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    return results


def parse_args(argv: list[str] | None = None) -> tuple[Config, str]:
    """Command line -> ``(config, workdir)``: a preset, then the flags given override it (every
    field of ``Config`` is a flag: ``--keep 0.5 --patch 8``)."""
    parser = common.ConfigParser(PRESETS, description=__doc__.splitlines()[0])  # flag per field
    parser.add_argument("--workdir", required=True, help="output directory")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    args = parser.parse_args(argv)
    return common.replace_given(PRESETS[args.preset], args), args.workdir


# ------------------------------------------------------------------------- claims


def claims(r: dict[str, Any]) -> list[lab.Claim]:
    """The papers' claims this experiment tests, each beside what ``results.json`` (``r``)
    measured, with a computed verdict (``pruneax.lab.compare``); read by ``reproduce``."""
    m = r["methods"]
    mass = {k: v["mean_score_mass"] for k, v in m.items()}
    dist = {k: v["mean_mean_dist"] for k, v in m.items()}
    out = [
        lab.Claim(
            "sanity check",
            "Top-k keeps the most score mass of any selector (true by construction: a check "
            "of the implementation, not of a paper)",
            f"score mass kept: topk {mass['topk']:.3f}; best other "
            f"{max(v for k, v in mass.items() if k != 'topk'):.3f}",
            lab.HOLDS if mass["topk"] >= max(mass.values()) - 1e-6 else lab.FAILS,
        )
    ]
    for name, paper in (("divprune", "DivPrune"), ("kcenter", "ToDRE (k-center)")):
        out.append(
            lab.Claim(
                paper,
                "Diversity selection covers the image better than attention top-k "
                "(distance from a patch to its nearest kept patch)",
                f"mean distance (patch widths): {name} {dist[name]:.3f} vs topk {dist['topk']:.3f}",
                lab.HOLDS if dist[name] < dist["topk"] else lab.FAILS,
            )
        )
    return out


EXPERIMENT = common.Experiment(
    name="token_demo",
    presets={"tiny": "default", "cpu": "default", "gpu": "default"},
    needs_data=False,
    claims=claims,
    summary=("Every pruneax.tokens selector on real digit images (model-free stand-in scores)."),
)


def main(argv: list[str] | None = None) -> dict:
    return run(*parse_args(argv))


if __name__ == "__main__":
    main()
