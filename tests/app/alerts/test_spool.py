"""Spool: FIFO order, persistence across re-open and a hard crash, one user per directory, bounds, corruption."""

import logging
import subprocess
import sys
import textwrap

import pytest

from app.alerts.spool import DB_NAME, Spool, SpoolLocked


def test_fifo_order_and_persistence_across_reopen(tmp_path):
    with Spool(tmp_path) as s:
        seqs = s.extend([("t/a", b"1"), ("t/b", b"2"), ("t/a", b"3")])
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
        assert [i.payload for i in s.peek(2)] == [b"1", b"2"]
        s.remove([seqs[0]])
        last = s.append("t/c", b"4")
        s.remove([last])  # the newest one gone: its number must never come back
        assert len(s) == 2
    with Spool(tmp_path) as s:
        items = s.peek(10)
        assert [(i.topic, i.payload) for i in items] == [("t/b", b"2"), ("t/a", b"3")]
        assert [i.payload for i in s.peek(10, after=items[0].seq)] == [b"3"]
        assert s.append("t/d", b"5") > last
        assert len(s) == 3
        s.remove([12345])  # unknown: ignored
        assert len(s) == 3


def test_appends_survive_a_killed_process(tmp_path):
    # The writer dies without closing anything (SIGKILL-like os._exit): every committed append must be there.
    code = textwrap.dedent(
        f"""
        import os
        from app.alerts.spool import Spool
        s = Spool({str(tmp_path)!r})
        for k in range(50):
            s.append("edgecv/s/d/cam/events", str(k).encode())
        os._exit(9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 9, proc.stderr.decode()
    with Spool(tmp_path) as s:  # the dead process' lock is gone with it
        assert [int(i.payload) for i in s.peek(100)] == list(range(50))


def test_one_user_per_directory(tmp_path):
    with Spool(tmp_path):
        with pytest.raises(SpoolLocked, match=str(tmp_path)):
            Spool(tmp_path)
    Spool(tmp_path).close()  # free again once closed


def test_full_spool_drops_the_oldest_and_says_so(tmp_path, caplog):
    with Spool(tmp_path, max_items=3) as s, caplog.at_level(logging.ERROR, "app.alerts.spool"):
        s.extend([("t", str(k).encode()) for k in range(5)])
        assert [i.payload for i in s.peek(10)] == [b"2", b"3", b"4"]
        assert (len(s), s.dropped) == (3, 2)
        assert "spool full" in caplog.text


def test_unreadable_database_is_moved_aside_not_deleted(tmp_path, caplog):
    (tmp_path / DB_NAME).write_bytes(b"this is not an SQLite database" * 100)
    with caplog.at_level(logging.ERROR, "app.alerts.spool"), Spool(tmp_path) as s:
        assert len(s) == 0
        s.append("t", b"x")
    aside = list(tmp_path.glob(f"{DB_NAME}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert "unreadable spool" in caplog.text


@pytest.mark.parametrize("kwargs, message", [({"max_items": 0}, "max_items"), ({"synchronous": "OFF"}, "FULL")])
def test_bad_settings(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Spool(tmp_path, **kwargs)
