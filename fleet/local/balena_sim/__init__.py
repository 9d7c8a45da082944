"""A local, faithful double of the balena API (v7, OData through pinejs) that the real balena-sdk talks to.

The product starts it for `edgecv rollout rehearse` (a simulated fleet); the tests drive it through
tests/support/balena_double. Its server rules follow open-balena-api's model and hooks (store.py).
"""

from fleet.local.balena_sim.server import BalenaDouble, Fault, Recorded

__all__ = ["BalenaDouble", "Fault", "Recorded"]
