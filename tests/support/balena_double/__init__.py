"""A small local double of the balena API (v7, OData through pinejs), driven by the real balena-sdk in tests."""

from tests.support.balena_double.server import BalenaDouble, Fault, Recorded

__all__ = ["BalenaDouble", "Fault", "Recorded"]
