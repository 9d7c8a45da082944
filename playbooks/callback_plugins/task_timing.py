"""Per-play and per-task wall time, printed after the recap (ansible-core ships no profile_tasks)."""

from __future__ import annotations

import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_timing
type: aggregate
short_description: where a run's time went, after the recap
description: >-
  Prints the wall time of each play (a batched play counts all its batches) and the slowest tasks
  (summed over batches; hosts running a task in parallel count once): ten, or EDGECV_TASK_TIMING_TOP.
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
        self._plays: dict[str, float] = {}
        self._current: tuple[str, float] | None = None
        self._play: tuple[str, float] | None = None
        self._start = time.monotonic()

    def _close(self) -> None:
        if self._current:
            name, started = self._current
            self._times[name] = self._times.get(name, 0.0) + time.monotonic() - started
            self._current = None

    def _close_play(self) -> None:
        if self._play:
            name, started = self._play
            self._plays[name] = self._plays.get(name, 0.0) + time.monotonic() - started
            self._play = None

    def v2_playbook_on_play_start(self, play):
        self._close()
        self._close_play()  # a batched play starts once per batch: its batches add up under one name
        self._play = (play.get_name(), time.monotonic())

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self._current = (task.get_name(), time.monotonic())

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):
        self._close()
        self._close_play()
        total = time.monotonic() - self._start
        self._display.display(f"PLAY TIMING (total {total:.1f}s)")
        for name, secs in self._plays.items():
            self._display.display(f"  {secs:7.1f}s  {name}")
        top = int(os.environ.get("EDGECV_TASK_TIMING_TOP", "10"))
        self._display.display(f"TASK TIMING (total {total:.1f}s, slowest first)")
        for name, secs in sorted(self._times.items(), key=lambda kv: -kv[1])[:top]:
            self._display.display(f"  {secs:7.1f}s  {name}")
