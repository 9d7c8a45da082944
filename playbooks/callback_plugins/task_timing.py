"""Per-task wall time, slowest first, printed after the recap (ansible-core ships no profile_tasks)."""

from __future__ import annotations

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_timing
type: aggregate
short_description: slowest tasks of a run, after the recap
description: Prints the ten slowest tasks (summed over hosts running them in parallel as wall time).
requirements: [enable in ansible.cfg callbacks_enabled]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._times: dict[str, float] = {}
        self._current: tuple[str, float] | None = None
        self._start = time.monotonic()

    def _close(self) -> None:
        if self._current:
            name, started = self._current
            self._times[name] = self._times.get(name, 0.0) + time.monotonic() - started
            self._current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self._current = (task.get_name(), time.monotonic())

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):
        self._close()
        total = time.monotonic() - self._start
        self._display.display(f"TASK TIMING (total {total:.1f}s, slowest first)")
        for name, secs in sorted(self._times.items(), key=lambda kv: -kv[1])[:10]:
            self._display.display(f"  {secs:7.1f}s  {name}")
