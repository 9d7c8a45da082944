"""Contracts: the documents and wire formats that the device app and the control plane share.

Model manifests, fleet files, the event and review-ingest wire formats and the metric names live here.
This package imports nothing else of ours, and runs on Python 3.10 (JetPack 6) because `app/` imports it.
"""
