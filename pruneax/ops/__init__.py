"""Array operations shared by the models: the Mamba selective scan.

- ``selective_scan``: Mamba's S6 recurrence in float32, as an associative (parallel) scan or a
  sequential reference, with ToP-ViM's hidden-state alignment for pruned tokens (``keep``
  mask over the full sequence, or the compact ``gap_delta`` form over the kept tokens).
- ``gap_delta_sum``: the compact form's ``gap_delta`` from a full sequence and a keep mask.

Like ``pruneax.tokens`` and ``pruneax.weights``, this package imports only jax: no Flax.
"""

from pruneax.ops._scan import MODES, gap_delta_sum, selective_scan

__all__ = ["MODES", "gap_delta_sum", "selective_scan"]
