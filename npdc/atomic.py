"""Atomic file writes: write beside the target, fsync, then rename over it.

A run killed mid-write leaves the previous file (or none), never a half-written one. What it does
leave is its temporary file, `.NAME.PID.RANDOM.tmp` beside the target; the next write to the same
target removes such a sibling when its writer is gone (no process PID on this machine) or when it
is older than STALE_SECONDS whatever its name says (a PID can be reused; no write takes an hour).
A live writer's file is younger than that and its PID alive, so it is never taken from under it.
"""

import contextlib
import glob
import os
import tempfile
import time
from pathlib import Path

STALE_SECONDS = 3600


def _writer_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):  # alive, another user's
        return False
    return False


def remove_stale(path):
    """Remove the temporary files killed writes to `path` left; returns how many went."""
    path, removed = Path(path), 0
    for tmp in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*.tmp")):
        pid = Path(tmp).name[len(path.name) + 2:].split(".")[0]
        try:
            old = time.time() - os.stat(tmp).st_mtime > STALE_SECONDS
            if old or (pid.isdigit() and int(pid) != os.getpid() and _writer_gone(int(pid))):
                os.unlink(tmp)
                removed += 1
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; on success it replaces `path`. Stale
    temporary files of earlier, killed writes to `path` are removed first (remove_stale)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a model file is an ordinary file
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)
