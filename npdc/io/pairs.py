"""Pairs files: verification pairs as plain text, close to LFW's pairs.txt.

LFW's View 2 file (Huang et al. 2007) lists ten folds, each with its same-person pairs and then
its different-person pairs, images named by person and number. Here images are indices into one
split of a dataset (0-based), and fold boundaries and the kind of pair are explicit headers:

    npdc-pairs 1
    # any comment
    fold 1 same
    549 601
    416 339
    fold 1 different
    12 7001
    ...

The first line names the format and its version. `fold K same` or `fold K different` starts a
section (K from 1); each following line is one pair: exactly two whole numbers. Blank lines and
lines starting with `#` are ignored. Folds are numbered 1..F without gaps, each (fold, kind)
section appears once, and every fold has both kinds. The file is read as hostile: its size is
taken from its allocation budget before parsing, every field is checked, and a mistake is one
line naming the line.
"""

import re
from pathlib import Path

import numpy as np

from npdc.atomic import write_text
from npdc.engine.verification import Pairs, check_pairs
from npdc.errors import UserError
from npdc.limits import Budget

MAGIC, VERSION = "npdc-pairs", 1
KINDS = {"same": True, "different": False}
_INDEX = re.compile(r"[0-9]{1,18}")  # ASCII digits only (int() would take other scripts' digits)
BYTES_PER_LINE = 128  # what parsing one line may cost in Python objects, taken from the budget


def read_pairs(path, images=None, labels=None):
    """Pairs of the file at `path`; with the split's size `images` (and `labels`), also checked
    against it (npdc.engine.verification.check_pairs), messages naming the file's lines."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    budget = Budget.for_path(path)
    budget.take(path.stat().st_size, "its text")
    raw = path.read_bytes()
    budget.take(BYTES_PER_LINE * (raw.count(b"\n") + 1), "its lines")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (not UTF-8)") from None
    pairs, lines = _parse(path, text.splitlines())
    check_pairs(pairs, images, labels, where=lambda k: f"{path} line {lines[k]}")
    return pairs


def _parse(path, lines):
    rows, where, sections, section, started = [], [], set(), None, False
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        at = f"{path} line {number}"
        if not started:
            if fields[0] != MAGIC:
                raise UserError(f"{at}: not a pairs file (it must start with '{MAGIC} {VERSION}')")
            if fields[1:] != [str(VERSION)]:
                raise UserError(f"{at}: pairs file version {' '.join(fields[1:]) or '(none)'} is not "
                                f"one this npdc reads ({VERSION})")
            started = True
            continue
        if fields[0] == "fold":
            section = _section(at, fields, sections)
            continue
        if len(fields) != 2 or not all(_INDEX.fullmatch(f) for f in fields):
            raise UserError(f"{at}: expected a pair, two image indices (whole numbers), found "
                            f"{len(fields)} field{'s' * (len(fields) != 1)} {line.strip()[:40]!r}")
        if section is None:
            raise UserError(f"{at}: a pair before any 'fold K same|different' line")
        rows.append((int(fields[0]), int(fields[1]), *section))
        where.append(number)
    if not started:
        raise UserError(f"{path}: empty; a pairs file starts with '{MAGIC} {VERSION}'")
    folds = sorted({f for f, _ in sections})
    if folds != list(range(len(folds))):
        missing = sorted(set(range(max(folds, default=0) + 1)) - set(folds))
        raise UserError(f"{path}: folds are numbered 1..F without gaps; fold {missing[0] + 1} is missing")
    if not rows:
        raise UserError(f"{path}: holds no pairs")
    if max(r[2] for r in rows) + 1 < len(folds):
        raise UserError(f"{path}: fold {len(folds)} has no pairs; each fold needs both kinds")
    first, second, fold, same = (np.array(column) for column in zip(*rows))
    return Pairs(first.astype(np.int64), second.astype(np.int64), same.astype(bool),
                 fold.astype(np.int64)), where


def _section(at, fields, sections):
    """(fold index from 0, same?) of a `fold K same|different` line, each section once."""
    if len(fields) != 3 or not _INDEX.fullmatch(fields[1]) or int(fields[1]) < 1 or fields[2] not in KINDS:
        raise UserError(f"{at}: expected 'fold K same' or 'fold K different' with K from 1, "
                        f"found {' '.join(fields)[:60]!r}")
    key = (int(fields[1]) - 1, KINDS[fields[2]])
    if key in sections:
        raise UserError(f"{at}: a second '{' '.join(fields)}' section")
    sections.add(key)
    return key


def format_pairs(pairs, comment=""):
    """The text of a pairs file; `comment` lines become '#' lines after the first."""
    out = [f"{MAGIC} {VERSION}"] + [f"# {c}" for c in comment.splitlines()]
    for f in range(pairs.folds):
        for name, kind in KINDS.items():
            out.append(f"fold {f + 1} {name}")
            chosen = (pairs.fold == f) & (pairs.same == kind)
            out += [f"{i} {j}" for i, j in zip(pairs.first[chosen], pairs.second[chosen])]
    return "\n".join(out) + "\n"


def write_pairs(path, pairs, comment=""):
    """Write `pairs` to `path` atomically in the format above."""
    write_text(path, format_pairs(pairs, comment))
