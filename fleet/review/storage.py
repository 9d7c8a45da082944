"""The service's files on disk: private by default, and the session signing key kept outside the database.

Images, the SQLite database and the key are site data (frames of people at work): the data directory is
0700 and every file in it 0600, whatever the umask. The key comes from EDGECV_REVIEW_SECRET (a secret
manager can inject it) or from data_dir/session.key, made once (0600, O_EXCL: concurrent first starts
agree on one key) and shared by every server process that uses the same data directory.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_ENV = "EDGECV_REVIEW_SECRET"
KEY_FILE = "session.key"


class StorageError(RuntimeError):
    pass


def private_dir(path: Path, tighten: bool = True) -> Path:
    """Make `path` (and missing parents) 0700; with `tighten`, also an existing one we own (never a shared
    folder such as /tmp: a database URL may point anywhere, so its folder is only made, not changed)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if tighten and st.st_mode & 0o077 and st.st_uid == os.getuid() and not st.st_mode & 0o1000:
        path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty with 0600 if missing; tighten it to 0600 if it exists and we own it."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
            path.chmod(0o600)
    return path


def session_key(data_dir: Path, environ: dict | None = None) -> str:
    env = os.environ if environ is None else environ
    if env.get(SECRET_ENV):
        if len(env[SECRET_ENV]) < 32:
            raise StorageError(f"{SECRET_ENV}: at least 32 characters")
        return env[SECRET_ENV]
    path = private_dir(data_dir) / KEY_FILE
    if not path.exists():
        # Written whole to a temporary file, then linked into place: a concurrent start never reads half a key.
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink()
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise StorageError(f"{path}: mode {mode:o}, others can read it; chmod 600 {path}")
    key = path.read_text().strip()
    if len(key) < 32:
        raise StorageError(f"{path}: shorter than 32 characters (delete it to make a new key)")
    return key
