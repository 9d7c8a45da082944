"""edgecv-fleet control plane: manifests, gates, Triton rendering, rollouts, review, cost."""

__version__ = "0.1.0"
