"""Examples that run on voxgate (``python -m examples.<name>`` from the repository root)."""
