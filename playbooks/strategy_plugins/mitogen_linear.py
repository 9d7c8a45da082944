"""Mitogen's linear strategy, found through this repository's ansible.cfg (strategy = mitogen_linear).

Mitogen keeps one Python interpreter per device for the whole run and sends modules to it, instead of one
SSH exec + interpreter start per task: a converged site's re-run is about twice as fast. Its plugin lives
inside the installed package, whose path depends on the virtualenv; importing it here keeps ansible.cfg
free of such paths. `ANSIBLE_STRATEGY=linear` runs without it.
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: F401
