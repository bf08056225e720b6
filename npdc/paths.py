"""Where a command may write: never over one of its inputs, never onto a directory, never under
a regular file or in a folder this user cannot write. Checked before any work starts, so that a
long run does not fail at its last step; the messages name the option (`--out`, `--report`).
"""

import os
from pathlib import Path

from npdc.errors import UserError


def _same(a, b):
    """Whether paths a and b name the same file: os.path.samefile when both exist (hard links,
    symlinks), else their resolved paths."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_paths(inputs=(), outputs=(), folders=()):
    """Before any work: no output may be (a link to) an input, or an existing directory, or lie
    under a regular file or in a place this user cannot write; no folder option may name a file.
    `inputs` may hold None and names that are not files (a shipped dataset's name), skipped."""
    inputs = [p for p in inputs if p is not None and Path(p).exists()]
    for option, folder in folders:
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise UserError(f"{option} {folder} is a file, not a folder")
        if folder is not None:
            _writable(option, Path(folder))
    for option, out in outputs:
        if out is None:
            continue
        for source in inputs:
            if _same(out, source):
                raise UserError(f"{option} {out} is the input {source}; refusing to write over an input")
        if Path(out).is_dir():
            raise UserError(f"{option} {out} is a directory; give a file name")
        _writable(option, Path(out).parent)


def _writable(option, folder):
    """The nearest existing ancestor of `folder` must be a directory this user can write."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{option}: {folder} is a file, so nothing can be written under it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{option}: cannot write in {folder} (permission denied)")
