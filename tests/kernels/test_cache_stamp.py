"""Numba's cache of a guarded folder is stale after an edit of any file in it (cache_stamp)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from npdc.kernels import cache_stamp, fused
from npdc.kernels.cache_stamp import kernels_digest

RUN = textwrap.dedent("""
    import sys
    from npdc.kernels.cache_stamp import stamp_caches
    assert stamp_caches(sys.argv[1])
    sys.path.insert(0, sys.argv[1])
    from caller import outer
    print(outer())
""")


def _write(folder, name, text, mtime):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    os.utime(path, (mtime, mtime))


def _outer(folder):
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", RUN, str(folder)], capture_output=True, text=True,
                          cwd=root, env=dict(os.environ, NUMBA_CACHE_DIR=""), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1])


def test_an_edited_callee_in_another_file_recompiles_its_caller(tmp_path):
    """caller.outer, cached, calls callee.value from another file of the folder; after value's
    file changes, a new process runs the new value through outer (Numba alone, which stamps
    caller.py only, would load outer's old machine code with the old value inside)."""
    _write(tmp_path, "callee.py", """
        import numba
        @numba.njit(cache=True)
        def value():
            return 1
    """, 1_000_000)
    _write(tmp_path, "caller.py", """
        import numba
        from callee import value
        @numba.njit(cache=True)
        def outer():
            return value() * 10
    """, 1_000_000)
    assert _outer(tmp_path) == 10
    assert list((tmp_path / "__pycache__").glob("caller.outer*.nbi"))  # it was cached
    _write(tmp_path, "callee.py", """
        import numba
        @numba.njit(cache=True)
        def value():
            return 2
    """, 2_000_000)
    assert _outer(tmp_path) == 20


def test_kernels_are_stamped_with_the_digest_of_every_kernel_source():
    locator = fused.finish_rows._cache._impl.locator  # the dispatcher's cache
    assert type(locator).__name__.startswith("Folder")  # InTree, or UserProvided under NUMBA_CACHE_DIR
    assert kernels_digest() in locator.get_source_stamp()
    assert cache_stamp.source_digest(cache_stamp.KERNELS) == kernels_digest()


def test_the_digest_follows_any_file_of_the_folder(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 1\n")
    before = cache_stamp.source_digest.__wrapped__(tmp_path)
    (tmp_path / "b.py").write_text("y = 2\n")
    assert cache_stamp.source_digest.__wrapped__(tmp_path) != before
