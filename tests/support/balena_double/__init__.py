"""The balena API double the tests drive (it lives in fleet/local/balena_sim, where rehearsals start it)."""

from fleet.local.balena_sim import BalenaDouble, Fault, Recorded

__all__ = ["BalenaDouble", "Fault", "Recorded"]
