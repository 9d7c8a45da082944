"""edgecv-fleet device app: capture -> batch -> infer -> track -> rules -> alerts/evidence."""

__version__ = "0.1.0"
