"""pruneax: neural-network pruning in JAX.

- ``pruneax.tokens``: token-pruning transforms (selection, scoring, merging).
- ``pruneax.weights``: weight-pruning transforms over parameter pytrees.
- ``pruneax.ops``: the Mamba selective scan (associative / sequential, keep mask, gap decay).
- ``pruneax.models`` (Flax NNX) and ``pruneax.data`` (dataset readers): import them explicitly.
"""

from pruneax import ops, tokens, weights

__version__ = "0.1.0"
__all__ = ["__version__", "ops", "tokens", "weights"]
