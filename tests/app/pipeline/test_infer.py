"""Shared-memory housekeeping of the inference client: regions of app processes that died are removed."""

import os
import subprocess
import sys

from app.pipeline.infer import SHM_PREFIX, remove_stale_regions


def test_stale_regions_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"{SHM_PREFIX}{dead_pid}_abc_in"
    live = tmp_path / f"{SHM_PREFIX}{os.getpid()}_abc_out"
    other = tmp_path / f"edgecv_{dead_pid}_triton_region"  # not ours (a Triton's python backend): left alone
    for p in (stale, live, other):
        p.write_bytes(b"\0" * 16)
    removed = remove_stale_regions(str(tmp_path))
    assert removed == [str(stale)]
    assert not stale.exists() and live.exists() and other.exists()
