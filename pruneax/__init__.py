"""pruneax: neural-network pruning in JAX.

- ``pruneax.tokens``: token-pruning transforms (selection, scoring, merging).
"""

from pruneax import tokens

__version__ = "0.1.0"
__all__ = ["__version__", "tokens"]
