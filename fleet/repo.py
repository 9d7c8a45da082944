"""Where the control plane finds this repository's own files (bundled models, fleets, demo config)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
