"""Runnable experiments: a thin CLI per module, an importable ``run(config)``, results on disk."""
