"""How npdc shows progress and human messages: the one place that decides.

Every progress bar in npdc is `progress_bar(...)` and every human message `say(...)`; both go to
stderr (results and `--json` lines go to stdout, printed by the command line).

- On a terminal a bar is a tqdm bar, redrawn in place.
- Anywhere else (a file, a CI log, a pipe) a redrawn bar would write every refresh into the log,
  so a bar becomes plain lines through the `npdc` logger: one when it finishes, with tqdm's own
  figures (count, elapsed, rate and the postfix: loss, accuracy, learning rate), and, while it
  runs, one every LINE_SECONDS with the ETA. No carriage returns.
- Messages and bars are shown at level info; the command line sets the level (`--log-level`,
  `--quiet` = warning) with `output`, a library caller with `shown(True/False)` around a call
  (the API's `progress=`). A program that configures the `npdc` logger itself keeps its setting.
"""

import contextlib
import logging
import sys
import threading
import time

from tqdm import tqdm

logger = logging.getLogger("npdc")
LINE_SECONDS = 30.0
NOTICE_SECONDS = 5.0  # a silent wait longer than this gets a line saying why (notice_if_slow)
_RUNNING = "{desc}: {percentage:.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_DONE = "{desc}: {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"
_OPEN = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"  # no total known


class _Stderr(logging.Handler):
    """Writes each message as one line to whatever sys.stderr is at that moment (test captures
    and notebooks replace it)."""

    def emit(self, record):
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 (logging's own convention)
            self.handleError(record)


@contextlib.contextmanager
def output(level="info"):
    """The command line's set-up while a command runs: messages at `level` and above on stderr,
    as plain lines; the logger is left as it was afterwards (tests run many commands in one
    process)."""
    before = logger.level, logger.propagate, logger.disabled
    handler = _Stderr()
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate, logger.disabled = False, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate, logger.disabled = before[1], before[2]


@contextlib.contextmanager
def shown(enabled):
    """Within the block, show bars and messages (enabled) or none at all (not enabled). Enabled
    means: at info, as plain lines on stderr, unless handlers are set on the `npdc` logger (by the
    command line or by the program), which then decide."""
    before = logger.level, logger.propagate, logger.disabled
    added = None
    if not enabled:
        logger.disabled = True
    elif not logger.handlers:
        added = _Stderr()
        logger.addHandler(added)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        if added is not None:
            logger.removeHandler(added)
        logger.setLevel(before[0])
        logger.propagate, logger.disabled = before[1], before[2]


def say(text):
    """A human message (a stage's result, a notice): one line at level info."""
    logger.info(text)


def warn(text):
    """Something the user should know although the work goes on (a skipped file): one line at
    level warning, shown even with --quiet."""
    logger.warning(text)


@contextlib.contextmanager
def notice_if_slow(text, seconds=None, when=None):
    """Say `text` once if the block still runs after `seconds` (default NOTICE_SECONDS) and
    `when()` (if given) is then true, from a timer thread; nothing when the block ends sooner.
    For waits with no steps to count, such as Numba compiling kernels on their first use."""
    def fire():
        if when is None or when():
            say(text)

    timer = threading.Timer(NOTICE_SECONDS if seconds is None else seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def progress_bar(iterable=None, *, total=None, desc="", unit="it", enabled=True, leave=True):
    """A bar with tqdm's interface (iterate, update, set_postfix, close): tqdm on a terminal,
    LineProgress elsewhere, a silent tqdm when not `enabled` or when info messages are off."""
    if not (enabled and logger.isEnabledFor(logging.INFO)):
        return tqdm(iterable, total=total, disable=True)
    if _is_terminal(sys.stderr):
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr)
    return LineProgress(iterable, total, desc, unit)


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """A progress bar for logs: a line when it completes and one every LINE_SECONDS before that,
    each with the figures tqdm shows. A bar closed before completing (an error, a stop) says
    nothing; the error that stopped it does."""

    def __init__(self, iterable, total, desc, unit):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self.postfix, self.closed = 0, "", False
        self.start = self.last_line = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __len__(self):
        return self.total or 0

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        if now - self.last_line >= LINE_SECONDS and not self._complete():
            self.last_line = now
            self._line()

    def set_postfix(self, **figures):
        self.postfix = ", ".join(f"{k}={v}" for k, v in figures.items())

    def set_description(self, desc):
        self.desc = desc

    def close(self):
        if not self.closed and self.n and (self.total is None or self._complete()):
            self._line()
        self.closed = True

    def _complete(self):
        return self.total is not None and self.n >= self.total

    def _line(self):
        form = _OPEN if not self.total else _DONE if self._complete() else _RUNNING
        logger.info(tqdm.format_meter(self.n, self.total, time.monotonic() - self.start, prefix=self.desc,
                                      unit=self.unit, postfix=self.postfix or None, bar_format=form))
