"""pruneax.ops.selective_scan: associative == sequential == a float64 NumPy loop, the keep mask
(ToP-ViM hidden-state alignment) and its compact gap form, chunking, remat, dtypes, gradients,
jit / vmap and argument errors.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pruneax.ops import gap_delta_sum, selective_scan

TOL = dict(atol=1e-5, rtol=1e-5)


def numpy_scan(x, delta, A, B, C, D=None, z=None, *, h0=None, keep=None, gap=None):
    """Independent oracle: the recurrence as a float64 loop over batch and time."""
    x, delta, A, B, C = (np.asarray(v, np.float64) for v in (x, delta, A, B, C))
    b, length, e = x.shape
    n = A.shape[1]
    y = np.zeros((b, length, e))
    h_last = np.zeros((b, e, n))
    for i in range(b):
        h = np.zeros((e, n)) if h0 is None else np.asarray(h0[i], np.float64)
        for t in range(length):
            step = delta[i, t] + (0.0 if gap is None else np.asarray(gap[i, t], np.float64))
            h = np.exp(step[:, None] * A) * h
            if keep is None or keep[i, t]:
                h = h + (delta[i, t] * x[i, t])[:, None] * B[i, t][None, :]
            y[i, t] = h @ C[i, t]
            if D is not None:
                y[i, t] += np.asarray(D, np.float64) * x[i, t]
            if z is not None:
                zz = np.asarray(z[i, t], np.float64)
                y[i, t] *= zz / (1.0 + np.exp(-zz))
        h_last[i] = h
    return y, h_last


def make_inputs(b, length, e, n, *, seed=0, delta_scale=1.0, a_scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, length, e)).astype(np.float32)
    delta = (delta_scale * np.log1p(np.exp(rng.normal(size=(b, length, e))))).astype(np.float32)
    A = (-a_scale * np.exp(rng.normal(size=(e, n)))).astype(np.float32)
    B = rng.normal(size=(b, length, n)).astype(np.float32)
    C = rng.normal(size=(b, length, n)).astype(np.float32)
    D = rng.normal(size=(e,)).astype(np.float32)
    z = rng.normal(size=(b, length, e)).astype(np.float32)
    return x, delta, A, B, C, D, z


@functools.partial(jax.jit, static_argnames=("mode", "chunk_size", "remat", "return_state"))
def scan(*args, **kw):
    return selective_scan(*args, **kw)


# (B, L, E, N, delta scale, |A| scale): L = 1, odd and even L, decays ~ 0 and ~ 1.
CASES = {
    "L1": (2, 1, 3, 2, 1.0, 1.0),
    "odd": (2, 7, 5, 3, 1.0, 1.0),
    "even": (3, 16, 4, 4, 1.0, 1.0),
    "long_odd": (1, 33, 6, 8, 1.0, 1.0),
    "decay_to_zero": (2, 9, 4, 3, 10.0, 30.0),
    "decay_to_one": (2, 12, 4, 3, 1e-4, 1e-3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_modes_match_numpy_oracle(case):
    b, length, e, n, ds, As = CASES[case]
    args = make_inputs(b, length, e, n, delta_scale=ds, a_scale=As)
    want_y, want_h = numpy_scan(*args)
    ys = {}
    for mode in ("associative", "sequential"):
        y, h = scan(*args, mode=mode, return_state=True)
        assert y.dtype == jnp.float32 and y.shape == (b, length, e)
        assert h.dtype == jnp.float32 and h.shape == (b, e, n)
        np.testing.assert_allclose(y, want_y, **TOL)
        np.testing.assert_allclose(h, want_h, **TOL)
        ys[mode] = y
    np.testing.assert_allclose(ys["associative"], ys["sequential"], **TOL)


def test_decays_are_extreme_in_the_extreme_cases():
    """The "decay_to_zero" / "decay_to_one" cases do reach their regimes."""
    for case, check in (("decay_to_zero", lambda a: np.median(a) < 1e-6 and a.max() < 0.02),
                        ("decay_to_one", lambda a: a.min() > 0.999)):  # fmt: skip
        b, length, e, n, ds, As = CASES[case]
        _, delta, A, *_ = make_inputs(b, length, e, n, delta_scale=ds, a_scale=As)
        assert check(np.exp(delta[..., None] * A))


def test_optional_terms_and_initial_state():
    """Without D / z, and with an initial state h0, both modes equal the oracle."""
    x, delta, A, B, C, D, z = make_inputs(2, 10, 4, 3, seed=1)
    h0 = np.random.default_rng(2).normal(size=(2, 4, 3)).astype(np.float32)
    for d, g in ((None, None), (D, None), (None, z), (D, z)):
        want_y, want_h = numpy_scan(x, delta, A, B, C, d, g, h0=h0)
        for mode in ("associative", "sequential"):
            y, h = scan(x, delta, A, B, C, d, g, h0=h0, mode=mode, return_state=True)
            np.testing.assert_allclose(y, want_y, **TOL)
            np.testing.assert_allclose(h, want_h, **TOL)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 11, 50])
@pytest.mark.parametrize("remat", [False, True])
def test_chunked_and_remat_match_oracle(chunk_size, remat):
    """Chunks that divide L, do not divide it (padding), equal 1, or exceed L."""
    args = make_inputs(2, 11, 4, 3, seed=3)
    h0 = np.random.default_rng(4).normal(size=(2, 4, 3)).astype(np.float32)
    want_y, want_h = numpy_scan(*args, h0=h0)
    y, h = scan(*args, h0=h0, chunk_size=chunk_size, remat=remat, return_state=True)
    np.testing.assert_allclose(y, want_y, **TOL)
    np.testing.assert_allclose(h, want_h, **TOL)


def random_keep(b, length, k, seed):
    """A bool [b, length] mask with exactly k True per row."""
    rng = np.random.default_rng(seed)
    keep = np.zeros((b, length), bool)
    for i in range(b):
        keep[i, rng.choice(length, k, replace=False)] = True
    return keep


@pytest.mark.parametrize("mode", ["associative", "sequential"])
def test_keep_mask_matches_oracle(mode):
    x, delta, A, B, C, D, z = make_inputs(3, 13, 5, 4, seed=5)
    keep = random_keep(3, 13, 6, seed=6)
    keep[0, 0] = False  # a leading pruned run decays h0
    h0 = np.random.default_rng(7).normal(size=(3, 5, 4)).astype(np.float32)
    want_y, want_h = numpy_scan(x, delta, A, B, C, D, z, h0=h0, keep=keep)
    y, h = scan(x, delta, A, B, C, D, z, h0=h0, keep=keep, mode=mode, return_state=True)
    np.testing.assert_allclose(y, want_y, **TOL)
    np.testing.assert_allclose(h, want_h, **TOL)
    # All kept == no mask; none kept == only decay of h0 (and the D x skip term).
    np.testing.assert_allclose(
        scan(x, delta, A, B, C, D, z, keep=np.ones((3, 13), bool), mode=mode),
        scan(x, delta, A, B, C, D, z, mode=mode),
        **TOL,
    )
    want_none, _ = numpy_scan(x, delta, A, B, C, D, z, h0=h0, keep=np.zeros((3, 13), bool))
    got_none = scan(x, delta, A, B, C, D, z, h0=h0, keep=np.zeros((3, 13), bool), mode=mode)
    np.testing.assert_allclose(got_none, want_none, **TOL)


@pytest.mark.parametrize("mode", ["associative", "sequential"])
def test_pruned_inputs_never_reach_the_state(mode):
    """NaN / inf in a pruned position's x and B leave the state and kept outputs finite and
    unchanged; the pruned position's own output is the caller's to drop."""
    x, delta, A, B, C, D, z = make_inputs(2, 9, 4, 3, seed=8)
    keep = random_keep(2, 9, 5, seed=9)
    want_y, want_h = numpy_scan(x, delta, A, B, C, D, z, keep=keep)
    x_bad, B_bad = x.copy(), B.copy()
    x_bad[~keep] = np.nan
    B_bad[~keep] = np.inf
    y, h = scan(x_bad, delta, A, B_bad, C, D, z, keep=keep, mode=mode, return_state=True)
    np.testing.assert_allclose(h, want_h, **TOL)
    np.testing.assert_allclose(np.asarray(y)[keep], want_y[keep], **TOL)
    # Without the D x skip term, a pruned position's x and B influence nothing: zero gradient.
    gx, gb = jax.grad(
        lambda xx, bb: jnp.sum(scan(xx, delta, A, bb, C, None, z, keep=keep, mode=mode)),
        argnums=(0, 1),
    )(x, B)
    assert np.all(np.asarray(gx)[~keep] == 0.0) and np.all(np.asarray(gb)[~keep] == 0.0)
    assert np.any(np.asarray(gx)[keep] != 0.0)
    # With NaN / inf there, the gradients through the state stay finite (delta included).
    grads = jax.grad(
        lambda xx, dd, bb: jnp.sum(scan(xx, dd, A, bb, C, None, z, keep=keep, mode=mode)),
        argnums=(0, 1, 2),
    )(x_bad, delta, B_bad)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_gap_delta_sum_matches_loop():
    rng = np.random.default_rng(10)
    delta = rng.random((3, 15, 4)).astype(np.float32)
    keep = rng.random((3, 15)) < 0.4
    keep[1] = False
    keep[2] = True
    want = np.zeros_like(delta, dtype=np.float64)
    for i in range(3):
        acc = np.zeros(4)
        for t in range(15):
            want[i, t] = acc
            acc = np.zeros(4) if keep[i, t] else acc + delta[i, t]
    got = gap_delta_sum(delta, keep)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, **TOL)
    np.testing.assert_array_equal(np.asarray(got)[2], 0.0)  # nothing pruned: no gaps


@pytest.mark.parametrize("mode", ["associative", "sequential"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gap_form_equals_masked_scan_at_kept_positions(mode, seed):
    """The compact scan over the kept tokens, with gap_delta = the pruned deltas summed over
    each gap, equals the full keep-masked scan at the kept positions (outputs and the state
    at the last kept token). The pruned positions' x / B / C are replaced by garbage in the
    full scan to show that only their decays matter."""
    b, length, e, n, k = 3, 17, 5, 4, 7
    x, delta, A, B, C, D, z = make_inputs(b, length, e, n, seed=20 + seed)
    keep = random_keep(b, length, k, seed=30 + seed)
    if seed == 0:  # a leading gap before the first kept token, and the last token kept
        keep[:, 1:-1] = random_keep(b, length - 2, k - 1, seed=30)
        keep[:, 0], keep[:, -1] = False, True
    h0 = np.random.default_rng(40 + seed).normal(size=(b, e, n)).astype(np.float32)
    idx = np.stack([np.flatnonzero(row) for row in keep])  # [b, k] sorted kept positions
    take = lambda v: np.take_along_axis(v, idx[:, :, None], axis=1)
    gap = take(np.asarray(gap_delta_sum(delta, keep)))
    garbage = lambda v: np.where(keep[..., None], v, 1e3).astype(np.float32)
    full_y = scan(garbage(x), delta, A, garbage(B), C, D, z, h0=h0, keep=keep, mode=mode)
    comp_y, comp_h = scan(
        take(x), take(delta), A, take(B), take(C), D, take(z),
        h0=h0, gap_delta=gap, mode=mode, return_state=True,
    )  # fmt: skip
    np.testing.assert_allclose(comp_y, take(np.asarray(full_y)), **TOL)
    for i in range(b):  # state after the last kept token
        last = idx[i, -1] + 1
        _, h_i = scan(x[i : i + 1, :last], delta[i : i + 1, :last], A, B[i : i + 1, :last],
                      C[i : i + 1, :last], D, z[i : i + 1, :last], h0=h0[i : i + 1],
                      keep=keep[i : i + 1, :last], mode=mode, return_state=True)  # fmt: skip
        np.testing.assert_allclose(comp_h[i], h_i[0], **TOL)
    # And against the oracle run directly on the compact form.
    want, _ = numpy_scan(take(x), take(delta), A, take(B), take(C), D, take(z), h0=h0, gap=gap)
    np.testing.assert_allclose(comp_y, want, **TOL)


def test_bfloat16_inputs():
    """bf16 in, bf16 out; the computation is float32, so the result equals the float32 scan of
    the same (bf16-rounded) inputs up to the final rounding."""
    args32 = make_inputs(2, 12, 6, 4, seed=11)
    args16 = [jnp.asarray(v, jnp.bfloat16) for v in args32]
    rounded = [np.asarray(v.astype(jnp.float32)) for v in args16]
    for mode in ("associative", "sequential"):
        y16 = scan(*args16, mode=mode)
        assert y16.dtype == jnp.bfloat16
        y32 = scan(*rounded, mode=mode)
        np.testing.assert_allclose(y16.astype(jnp.float32), y32, rtol=1e-2, atol=1e-2)
        # ... and close to the unrounded float32 inputs' result (bf16 input rounding).
        ref = np.asarray(scan(*args32, mode=mode))
        err = np.abs(np.asarray(y16.astype(jnp.float32)) - ref)
        assert err.max() < 0.05 * np.abs(ref).max()


def test_gradients_match_between_modes():
    x, delta, A, B, C, D, z = make_inputs(2, 9, 4, 3, seed=12)
    h0 = np.random.default_rng(13).normal(size=(2, 4, 3)).astype(np.float32)
    keep = random_keep(2, 9, 5, seed=14)
    w = np.random.default_rng(15).normal(size=x.shape).astype(np.float32)

    def loss(kw):
        def f(*a):
            return jnp.sum(w * selective_scan(*a[:7], h0=a[7], keep=keep, **kw))

        return jax.jit(jax.grad(f, argnums=tuple(range(8))))

    args = (x, delta, A, B, C, D, z, h0)
    ref = loss(dict(mode="sequential"))(*args)
    for kw in (
        dict(mode="associative"),
        dict(mode="associative", remat=True),
        dict(mode="associative", chunk_size=4, remat=True),
    ):
        got = loss(kw)(*args)
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)


def test_jit_vmap_and_no_retrace(compile_counter):
    args = make_inputs(2, 8, 4, 3, seed=16)
    axes = (0, 0, None, 0, 0, None, 0)  # A [E, N] and D [E] are shared across the vmap axis
    stacked = [np.stack([v, np.abs(v) * 0.5 + 0.1]) if ax == 0 else v
               for v, ax in zip(args, axes, strict=True)]  # fmt: skip
    for mode in ("associative", "sequential"):
        f = jax.jit(jax.vmap(functools.partial(selective_scan, mode=mode), in_axes=axes))
        got = f(*stacked)
        for j in range(2):
            one = [s[j] if ax == 0 else s for s, ax in zip(stacked, axes, strict=True)]
            np.testing.assert_allclose(got[j], selective_scan(*one, mode=mode), **TOL)
    g = jax.jit(selective_scan)
    g(*args)
    with compile_counter() as c:
        g(*make_inputs(2, 8, 4, 3, seed=17))
    assert c.count == 0


def _bad(**changes):
    x, delta, A, B, C, D, z = make_inputs(2, 5, 4, 3)
    kw = dict(x=x, delta=delta, A=A, B=B, C=C, D=D, z=z)
    kw.update(changes)
    return kw


@pytest.mark.parametrize(
    "kw, match",
    [
        (_bad(x=np.zeros((5, 4), np.float32)), "x must be"),
        (_bad(x=np.zeros((2, 0, 4), np.float32)), "at least one time step"),
        (_bad(x=np.zeros((2, 5, 4), np.int32)), "floating"),
        (_bad(delta=np.zeros((2, 5, 3), np.float32)), "delta must be"),
        (_bad(A=np.zeros((3, 3), np.float32)), "A must be"),
        (_bad(A=np.zeros((4,), np.float32)), "A must be"),
        (_bad(B=np.zeros((2, 5, 2), np.float32)), "B must be"),
        (_bad(C=np.zeros((2, 4, 3), np.float32)), "C must be"),
        (_bad(D=np.zeros((3,), np.float32)), "D must be"),
        (_bad(z=np.zeros((2, 5, 5), np.float32)), "z must be"),
        (_bad(h0=np.zeros((2, 3, 4), np.float32)), "h0 must be"),
        (_bad(gap_delta=np.zeros((2, 5), np.float32)), "gap_delta must be"),
        (_bad(keep=np.ones((2, 4), bool)), "keep must be"),
        (_bad(keep=np.ones((2, 5), np.int32)), "keep must be a bool"),
        (_bad(mode="parallel"), "mode must be one of"),
        (_bad(chunk_size=0), "chunk_size"),
        (_bad(chunk_size=2.5), "chunk_size"),
        (_bad(chunk_size=True), "chunk_size"),
    ],
)
def test_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        selective_scan(**kw)


def test_gap_delta_sum_errors():
    with pytest.raises(ValueError, match="delta must be"):
        gap_delta_sum(np.zeros((2, 5)), np.ones((2, 5), bool))
    with pytest.raises(ValueError, match="keep must be a bool"):
        gap_delta_sum(np.zeros((2, 5, 3)), np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="keep must be a bool"):
        gap_delta_sum(np.zeros((2, 5, 3)), np.ones((2, 4), bool))


def test_ops_public_surface_is_pinned():
    import pruneax
    from pruneax import ops

    assert list(ops.__all__) == ["MODES", "gap_delta_sum", "selective_scan"]
    assert {n for n in dir(ops) if not n.startswith("_")} == set(ops.__all__)
    assert "ops" in pruneax.__all__
