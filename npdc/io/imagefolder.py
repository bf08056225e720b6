"""Folders of JPEG and PNG images (the ImageFolder layout) as image arrays decoded batch by batch.

    DIR/train/CLASS/....jpg|png    DIR/val/CLASS/...    DIR/test/CLASS/... (optional)

A class is a folder name; labels number the class folders in sorted order, and every split must
have the same class folders. Without test/, val/ is the split a model is judged on (x_test, as
ImageNet's val is used); with test/, val/ is the validation split `compress` decides on (x_val).
Files are listed in sorted order (class, then path), so the same seed draws the same batches.

Images are decoded with Pillow (the optional extra `images`) into uint8 (C, H, W): converted to
grey (C = 1) or RGB (C = 3), the shorter side resized to `resize` (bilinear), then the centre
H x W cropped — the evaluation transform of torchvision's ImageNet models (crop 224 of 256 by
default). Normalisation stays the model's (`Net.preprocess`, its stored mean and std), as with
every other dataset. `FolderImages` is an array-like the training and evaluation loops index
like a NumPy array (`len`, `shape`, `x[i:j]`, `x[index_array]`): only the images asked for are
decoded, and a bounded cache (NPDC_IMAGE_CACHE bytes, default 256 MiB) keeps decoded images
for the next epoch, so a folder larger than memory streams.

Every file is hostile. When a folder is loaded each image is opened (JPEG and PNG decoders only)
and decoded once (JPEG at 1/8 scale), so that a corrupt, truncated or unreadable image is
skipped with a warning naming it, and a count at the end, instead of failing a batch hours
later; an image of more than MAX_PIXELS pixels (a decompression bomb) is skipped too, before
it is decoded. Symbolic links: a link to a file inside the folder is followed, a link that leads
out of the folder, or to a folder (a possible cycle), is skipped with a warning; a link swapped
after the scan is checked again when the image is decoded.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npdc.errors import UserError
from npdc.progress import warn

INSTALL = 'install npdc[images] to read image folders: pip install -e ".[images]"'
SPLIT_FOLDERS = ("train", "val", "test")
SUFFIXES = (".jpg", ".jpeg", ".png")
FORMATS = ("JPEG", "PNG")
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit: 256 MiB as RGB
RESIZE_RATIO = 256 / 224  # the resize a crop gets by default (torchvision's ImageNet evaluation)
DEFAULT_CACHE = 256 << 20
DEFAULT_SHAPE = (3, 224, 224)


def pillow():
    """PIL.Image, or the one line saying what to install."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError(INSTALL) from None
    return Image


def is_image_folder(path: Path) -> bool:
    """True if `path` is a folder with a train/, val/ or test/ folder in it."""
    return path.is_dir() and any((path / s).is_dir() for s in SPLIT_FOLDERS)


@dataclass(frozen=True)
class Preprocess:
    """How a file becomes an image: grey (channels 1) or RGB (3), the shorter side resized to
    `resize`, the centre crop (H, W) kept."""

    channels: int
    crop: tuple[int, int]
    resize: int

    @classmethod
    def make(cls, shape, resize=None):
        """From the (C, H, W) a model takes (C 1 or 3) and a resize (default crop * 256/224)."""
        channels, height, width = (int(d) for d in shape)
        if channels not in (1, 3):
            raise UserError(f"image folders give 1 (grey) or 3 (RGB) channels, not {channels}")
        if min(height, width) < 1 or height * width > MAX_PIXELS:
            raise UserError(f"a crop of {height}x{width} pixels is not possible (at most {MAX_PIXELS:,})")
        resize = round(max(height, width) * RESIZE_RATIO) if resize is None else int(resize)
        if not max(height, width) <= resize <= 1 << 16:
            raise UserError(f"--resize {resize} must be at least the crop's longer side "
                            f"({max(height, width)}) and at most 65536")
        return cls(channels, (height, width), resize)

    @property
    def shape(self):
        return (self.channels, *self.crop)


class _Cache:
    """Decoded images by file number, the least recently used dropped past `limit` bytes."""

    def __init__(self, limit):
        self.limit, self.used, self.items = limit, 0, OrderedDict()

    def get(self, key):
        image = self.items.get(key)
        if image is not None:
            self.items.move_to_end(key)
        return image

    def put(self, key, image):
        if image.nbytes > self.limit:
            return
        self.items[key] = image
        self.used += image.nbytes
        while self.used > self.limit:
            self.used -= self.items.popitem(last=False)[1].nbytes


def cache_limit():
    text = os.environ.get("NPDC_IMAGE_CACHE", "").strip()
    if not text:
        return DEFAULT_CACHE
    if not text.isdigit():
        raise UserError(f"NPDC_IMAGE_CACHE={text!r} is not a whole number of bytes")
    return int(text)


class FolderImages:
    """The images of one split, uint8 (N, C, H, W), decoded when indexed: an int gives one image,
    a slice or an index array a NumPy batch; `subset(rows)` is a lazy selection (held-out
    splits). `files` are the split's image paths, `root` the folder no file may lead out of,
    `given` the (shape, resize) the user fixed (None: follow the model)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, root, files, prep, rows=None, given=(None, None), cache=None):
        self.root, self.files, self.prep, self.given = str(root), tuple(files), prep, given
        self.rows = np.arange(len(self.files)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.cache = cache if cache is not None else _Cache(cache_limit())

    @property
    def shape(self):
        return (len(self.rows), *self.prep.shape)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            head = self[key[0]]
            return head[(slice(None), *key[1:])] if head.ndim == 4 else head[key[1:]]
        if isinstance(key, (int, np.integer)):
            return self._image(int(self.rows[key]))
        rows = self.rows[key] if isinstance(key, slice) else self.rows[np.asarray(key)]
        out = np.empty((len(rows), *self.prep.shape), np.uint8)
        for i, row in enumerate(rows):
            out[i] = self._image(int(row))
        return out

    def __array__(self, dtype=None, copy=None):
        images = self[:]
        return images if dtype is None else images.astype(dtype)

    def subset(self, rows):
        """The images at `rows` (an index array), still decoded only when indexed."""
        return FolderImages(self.root, self.files, self.prep, self.rows[np.asarray(rows)], self.given,
                            self.cache)

    def fitted(self, shape):
        """These images as a model taking (C, H, W) wants them: its channels and crop, unless
        the crop was given (then a mismatch is the model's check to refuse), and the resize that
        was given or the crop's default."""
        prep = Preprocess.make(self.given[0] or shape, self.given[1])
        if prep == self.prep:
            return self
        return FolderImages(self.root, self.files, prep, self.rows, self.given)

    def fingerprint(self):
        """sha256 of what the images are made from: the preprocessing, and each file's path,
        size and modification time (what a resumed run must match)."""
        digest = hashlib.sha256(repr(self.prep).encode())
        for row in self.rows:
            try:
                stat = os.stat(self.files[row])
            except OSError as exc:
                raise UserError(f"{self.files[row]}: {exc.strerror or exc} (was it removed after the "
                                "folder was scanned?)") from None
            digest.update(f"{self.files[row]}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return digest.digest()

    def __getstate__(self):  # workers of a cluster get the recipe, not the decoded cache
        return {**self.__dict__, "cache": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.cache = _Cache(cache_limit())

    def _image(self, row):
        image = self.cache.get(row)
        if image is None:
            path = self.files[row]
            if not _inside(os.path.realpath(path), self.root):
                raise UserError(f"{path}: now leads out of {self.root}; refusing to read it")
            try:
                image = decode(path, self.prep)
            except _Unreadable as exc:
                raise UserError(f"{path}: {exc}, though it was readable when the folder was "
                                "scanned (has it changed?)") from None
            image.flags.writeable = False  # shared with the cache: a caller must copy to change it
            self.cache.put(row, image)
        return image


class _Unreadable(Exception):
    """A file that is not an image npdc can decode; the message says why."""


def _open(path):
    """An opened PIL image of `path`, JPEG or PNG only, of at most MAX_PIXELS pixels."""
    Image = pillow()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path, formats=FORMATS)
    except Exception as exc:  # noqa: BLE001 (a hostile file can make any decoder raise anything)
        raise _Unreadable(_reason(exc)) from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        image.close()
        raise _Unreadable(f"{width}x{height} pixels, more than the {MAX_PIXELS:,} allowed")
    return image


def _reason(exc):
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_file(path):
    """Decode `path` once (a JPEG at 1/8 scale: every byte of it is still read), raising
    _Unreadable if any of it cannot be."""
    with _open(path) as image:
        try:
            image.draft("RGB", (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
            image.convert("RGB").load()
        except Exception as exc:  # noqa: BLE001 (as in _open)
            raise _Unreadable(_reason(exc)) from None


def decode(path, prep):
    """The image at `path` as uint8 (C, H, W) by `prep`: grey or RGB, shorter side resized,
    centre-cropped. A JPEG is decoded at the smallest scale not below the resized size."""
    mode = "L" if prep.channels == 1 else "RGB"
    with _open(path) as image:
        width, height = image.size
        short, long = sorted((width, height))
        other = max(prep.resize, int(long * prep.resize / short))
        if prep.resize * other > MAX_PIXELS:
            raise _Unreadable(f"{width}x{height} pixels resized to {prep.resize} would be "
                              f"more than {MAX_PIXELS:,} pixels")
        size = (prep.resize, other) if width <= height else (other, prep.resize)
        try:
            image.draft(mode, size)
            image = image.convert(mode)
            if image.size != size:
                image = image.resize(size, pillow().Resampling.BILINEAR)
            top, left = (size[1] - prep.crop[0]) // 2, (size[0] - prep.crop[1]) // 2
            image = image.crop((left, top, left + prep.crop[1], top + prep.crop[0]))
            pixels = np.asarray(image, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001 (as in _open)
            raise _Unreadable(_reason(exc)) from None
    return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _some(names, shown=5):
    """A few names for a one-line message: 'a, b, c and 997 more'."""
    if not names:
        return "none"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _inside(real, root):
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _class_folders(split_dir):
    return sorted(e.name for e in os.scandir(split_dir)
                  if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))


def _image_files(folder, root, refused):
    """Image paths under `folder`, sorted, walking sub-folders; links out of `root` or to
    folders go to `refused` as (path, reason)."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            real = os.path.realpath(entry.path)
            if not _inside(real, root):
                refused.append((entry.path, "a symbolic link out of the folder"))
                continue
            if os.path.isdir(real):
                refused.append((entry.path, "a symbolic link to a folder (not followed)"))
                continue
        if entry.is_dir(follow_symlinks=False):
            found.extend(_image_files(entry.path, root, refused))
        elif entry.name.lower().endswith(SUFFIXES) and os.path.isfile(entry.path):
            found.append(entry.path)
    return found


def scan(root):
    """({split: (image paths, labels)}, class names) of the image folder `root`, every image
    decoded once: unreadable ones skipped, each with a warning, and counted in a last one."""
    root_path = Path(root)
    real_root = os.path.realpath(root_path)
    present = [s for s in SPLIT_FOLDERS if (root_path / s).is_dir()]
    classes = {s: _class_folders(root_path / s) for s in present}
    first = present[0]
    if not classes[first]:
        raise UserError(f"{root_path / first}: no class folders (expected {first}/CLASS/*.jpg or .png)")
    for split in present[1:]:
        if classes[split] != classes[first]:
            extra = sorted(set(classes[split]) - set(classes[first]))
            missing = sorted(set(classes[first]) - set(classes[split]))
            raise UserError(f"{root_path}: the class folders of {split}/ differ from {first}/'s "
                            f"(extra: {_some(extra)}; missing: {_some(missing)})")
    pillow()
    splits, refused, total = {}, [], 0
    for split in present:
        files, labels = [], []
        for label, name in enumerate(classes[first]):
            for path in _image_files(root_path / split / name, real_root, refused):
                total += 1
                try:
                    check_file(path)
                except _Unreadable as exc:
                    refused.append((path, str(exc)))
                    continue
                files.append(path)
                labels.append(label)
        if not files:
            raise UserError(f"{root_path / split}: no readable .jpg or .png images in its class folders")
        splits[split] = (files, np.asarray(labels, dtype=np.int64))
    for path, why in refused:
        warn(f"{path}: skipped ({why})")
    if refused:
        warn(f"{root_path}: skipped {len(refused)} of {total} image files that could not be used")
    return splits, classes[first]


def load_folder(root, shape=None, resize=None):
    """{split: (FolderImages, labels)} and the class names of the image folder `root`, mapped to
    npdc's splits (train, test, and val when test/ is there). `shape` (C, H, W) fixes the
    channels and crop, `resize` the shorter side (default the crop's 256/224); unless fixed,
    both follow the model the images are fitted to (`fitted`), 3x224x224 until then."""
    prep = Preprocess.make(shape or DEFAULT_SHAPE, resize if shape else None)
    found, classes = scan(root)
    real_root = os.path.realpath(root)
    names = {"train": "train", "test": "test", "val": "val" if "test" in found else "test"}
    given = (tuple(shape) if shape else None, resize)
    return {names[s]: (FolderImages(real_root, files, prep, given=given), labels)
            for s, (files, labels) in found.items()}, classes
