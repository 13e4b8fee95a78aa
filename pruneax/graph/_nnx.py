"""``from_nnx``: a pure ``(fn, params)`` pair for a Flax NNX model (flax imported lazily)."""

from __future__ import annotations


def from_nnx(model, output=None):
    """``(fn, state)`` with ``fn(state, *args, **kwargs) == output(model(*args, **kwargs))``.

    ``state`` is the whole ``nnx.state(model)`` (parameters and statistics such as batch-norm
    running averages, which are pruned with their channels); ``output`` picks an array pytree
    out of the model's result (e.g. ``lambda o: o.logits``), default the result itself. Put the
    model in the mode you want traced first (``model.eval()`` for inference batch norm).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from pruneax import graph
    >>> from pruneax.models import LeNet300100
    >>> fn, state = graph.from_nnx(LeNet300100(rngs=nnx.Rngs(0)))
    >>> g = graph.trace(fn, state, jnp.ones((1, 28, 28, 1)))
    >>> sorted(grp.size for grp in g.prunable())
    [100, 300]
    """
    from flax import nnx

    graphdef, state = nnx.split(model)

    def fn(state, *args, **kwargs):
        out = nnx.merge(graphdef, state)(*args, **kwargs)
        return out if output is None else output(out)

    return fn, state
