"""Numba's on-disk cache made to notice an edit anywhere in npdc/kernels.

Numba stamps a cached function with its own source file's modification time and size and
nothing else, so a kernel whose callee lives in another file and has changed still loads the old
machine code, the old callee compiled into it, and computes what the old code computed. An
upgrade of npdc over an existing cache, or an edit of one kernel file, would then run a mix of
old and new kernels without a word. Here every function defined in a guarded folder (npdc/kernels,
whose modules import nothing else that Numba compiles) is cached with a stamp that also holds a
digest of all of that folder's sources: an edit of any one of them makes the whole folder's cache
stale, and Numba compiles it again. Functions anywhere else are cached as Numba does by default.

The hook is the list of cache locator classes Numba tries in turn for each function
(numba.core.caching.CacheImpl._locator_classes). It is a private name, so it is looked up
defensively: where a Numba release lacks it, caching stays per file as before. The same digest
keys the measured kernel timings (npdc.engine.conv_select, npdc.runtime.program).
"""

import functools
import hashlib
from pathlib import Path

KERNELS = Path(__file__).resolve().parent
_LOCATORS = ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")


@functools.cache
def source_digest(folder):
    """The first 12 hex digits of a SHA-256 over folder/*.py, file names and bytes in name order."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def kernels_digest():
    """source_digest of npdc/kernels."""
    return source_digest(KERNELS)


def _stamped(base, folder):
    """A subclass of the Numba locator `base` that takes only functions defined in `folder` and
    adds the folder's source digest to their stamp."""

    class Stamped(base):
        @classmethod
        def from_function(cls, py_func, py_file):
            if Path(py_file).resolve().parent != folder:
                return None
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return super().get_source_stamp(), source_digest(folder)

    Stamped.__name__ = Stamped.__qualname__ = f"Folder{base.__name__}"
    Stamped.folder = folder
    return Stamped


def stamp_caches(folder=KERNELS):
    """Put folder-stamped locators ahead of Numba's own (once per folder); False when this Numba
    has no locator list to extend."""
    from numba.core import caching

    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    classes = getattr(impl, "_locator_classes", None)
    bases = [getattr(caching, name, None) or getattr(caching, "_" + name, None) for name in _LOCATORS]
    if not isinstance(classes, list) or None in bases:
        return False
    folder = Path(folder).resolve()
    if not any(getattr(c, "folder", None) == folder for c in classes):
        classes[:0] = [_stamped(base, folder) for base in bases]
    return True
