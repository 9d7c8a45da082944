"""Synthetic scenes and a tiny detector: the retraining loop shown end to end, offline."""
