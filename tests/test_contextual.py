"""VisionZip / VisionDrop contextual merging against a torch transcription of the published
vision-stage forward (``CLIPVisionTower_VisionZip.forward``, Ruixxxx/VisionDrop@b9d5df9)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pruneax.tokens as T

torch = pytest.importorskip("torch")


def published(attn, hidden, metric, dominant_num, contextual_num):
    """The published tensor code (batched, torch), transcribed: CLS + top ``dominant_num``
    patches by head-summed CLS attention (original order), then ``contextual_num`` contextual
    tokens from the rest (every step-th as target, argmax cosine assignment, target + mean)."""
    b, t, d = hidden.shape
    top = attn[:, :, 0, 1:].sum(dim=1).topk(dominant_num, dim=1).indices + 1
    keep = torch.cat([torch.zeros((b, 1), dtype=top.dtype), top], dim=1)
    mask = torch.ones((b, t), dtype=torch.bool).scatter_(1, keep, False)
    dominant = hidden.masked_select(~mask.unsqueeze(-1)).view(b, dominant_num + 1, d)
    rest_metric = metric[mask].view(b, t - dominant_num - 1, metric.shape[2])
    rest_hidden = hidden.masked_select(mask.unsqueeze(-1)).view(b, t - dominant_num - 1, d)
    normed = rest_metric / rest_metric.norm(dim=-1, keepdim=True)
    step = max(1, normed.shape[1] // contextual_num)
    targets = torch.arange(0, normed.shape[1], step)[:contextual_num]
    others = ~torch.isin(torch.arange(normed.shape[1]), targets)
    sim = torch.bmm(normed[:, others], normed[:, targets].transpose(1, 2))
    assign = torch.zeros(b, int(others.sum()), contextual_num, dtype=hidden.dtype)
    assign.scatter_(2, sim.argmax(dim=2).unsqueeze(-1), 1)
    counts = assign.sum(dim=1).clamp(min=1).unsqueeze(-1)
    merged = torch.bmm(assign.transpose(1, 2), rest_hidden[:, others]) / counts
    contextual = rest_hidden[:, targets] + merged
    return torch.cat([dominant, contextual], dim=1), sim


def ours(attn, hidden, metric, dominant_num, contextual_num):
    def one(a, h, m):
        patches = T.topk(T.cls_attention(a), dominant_num)
        ctx, targets = T.contextual_merge(h[1:], m[1:], patches, contextual_num)
        return jnp.concatenate([h[:1], h[1:][patches], ctx]), targets

    return jax.jit(jax.vmap(one))(attn, hidden, metric)


@pytest.mark.parametrize(
    "n, d, dominant, contextual",
    [(576, 64, 53, 10), (576, 32, 190, 30), (49, 16, 5, 7), (50, 8, 3, 46)],
)
def test_matches_the_published_vision_stage(n, d, dominant, contextual):
    rng = np.random.default_rng(n + dominant)
    b, h = 3, 4
    logits = rng.normal(size=(b, h, n + 1, n + 1)).astype(np.float32)
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    hidden = rng.normal(size=(b, n + 1, d)).astype(np.float32)
    metric = rng.normal(size=(b, n + 1, 12)).astype(np.float32)
    want, sim = published(*map(torch.from_numpy, (attn, hidden, metric)), dominant, contextual)
    got, targets = ours(attn, hidden, metric, dominant, contextual)
    top2 = torch.topk(sim, 2, dim=2).values if sim.shape[2] > 1 else None
    if top2 is not None:  # the assignment has no near-tie that float rounding could flip
        assert float((top2[..., 0] - top2[..., 1]).min()) > 1e-5
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-5, atol=1e-5)
    assert got.shape == (b, 1 + dominant + contextual, d)
    assert targets.dtype == jnp.int32 and targets.shape == (b, contextual)
    assert np.all(np.diff(np.asarray(targets), axis=1) > 0)


def test_every_token_is_kept_or_merged_exactly_once():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(20, 3)), jnp.float32)
    idx = jnp.asarray([2, 7, 11])
    ctx, targets = T.contextual_merge(x, x, idx, 4)
    rest = np.setdiff1d(np.arange(20), [2, 7, 11])
    targets = np.asarray(targets)
    assert targets.tolist() == rest[[0, 4, 8, 12]].tolist()  # step = 17 // 4 = 4
    # brute force: each non-target remaining token joins its most cosine-similar target
    xs = np.asarray(x, np.float64)
    unit = xs / np.linalg.norm(xs, axis=1, keepdims=True)
    others = np.setdiff1d(rest, targets)
    best = np.argmax(unit[others] @ unit[targets].T, axis=1)
    for j, t in enumerate(targets):
        members = others[best == j]
        want = xs[t] + (xs[members].mean(0) if len(members) else 0.0)
        np.testing.assert_allclose(np.asarray(ctx[j]), want, rtol=1e-5, atol=1e-6)


def test_bfloat16_input_and_bad_arguments():
    x = jnp.ones((10, 4), jnp.bfloat16)
    tokens, _ = T.contextual_merge(x, x, jnp.asarray([0, 1]), 3)
    assert tokens.dtype == jnp.bfloat16 and tokens.shape == (3, 4)
    with pytest.raises(ValueError, match=r"num_contextual must satisfy 1 <= num_contextual <= 8"):
        T.contextual_merge(x, x, jnp.asarray([0, 1]), 9)
    with pytest.raises(ValueError, match=r"metric must have shape \[N, Dm\]"):
        T.contextual_merge(x, x[0], jnp.asarray([0]), 1)
    with pytest.raises(ValueError, match="metric"):
        T.contextual_merge(x, x[:5], jnp.asarray([0]), 1)
    with pytest.raises(ValueError, match=r"idx must be \[k\] with k < N = 10"):
        T.contextual_merge(x, x, jnp.arange(10), 1)
    # a zero metric row (published: 0 / 0 = NaN) stays finite here
    m = jnp.ones((10, 4)).at[5].set(0.0)
    assert bool(jnp.all(jnp.isfinite(T.contextual_merge(x, m, jnp.asarray([0]), 2)[0])))
