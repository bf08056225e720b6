"""Image folders (train/CLASS/*.png|jpg, val/, test/) as datasets: layout, decoding, hostile and
broken files, streaming through the training loop, the command line. Every folder is generated
here in tmp_path."""

import logging
import os
import pickle
import struct
import zlib

import numpy as np
import pytest

from npdc.engine.resnet import build_net
from npdc.engine.train import evaluate, fit
from npdc.errors import UserError
from npdc.io import imagefolder
from npdc.io.datasets import load_dataset
from npdc.io.imagefolder import FolderImages, Preprocess, decode
from tests.conftest import assert_one_line_error, run_cli

Image = pytest.importorskip("PIL.Image")
CLASSES = ("cat", "dog", "emu")


def _picture(label, i, size=(20, 24)):
    """An RGB image (H, W, 3) whose colour tells its class, with a seeded texture."""
    rng = np.random.default_rng(100 * label + i)
    base = np.zeros((*size, 3), np.uint8)
    base[..., label] = 200
    return (base + rng.integers(0, 40, (*size, 3))).astype(np.uint8)


def make_folder(root, splits=("train", "val"), per_class=4, size=(20, 24)):
    """PNG and JPEG files in root/SPLIT/CLASS/; returns root."""
    for s, split in enumerate(splits):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                suffix = ".png" if i % 2 else ".jpg"
                Image.fromarray(_picture(label, 10 * s + i, size)).save(root / split / name / f"{i}{suffix}")
    return root


def test_layout_classes_labels_and_splits(tmp_path):
    data = load_dataset(str(make_folder(tmp_path / "d")), shape=(3, 16, 16))
    assert data.classes == CLASSES and data.num_classes == 3
    assert isinstance(data.x_train, FolderImages) and data.x_train.shape == (12, 3, 16, 16)
    assert data.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.x_test.shape == (12, 3, 16, 16) and data.x_val is None  # val/ judged on without test/
    assert data.x_train.files[0].endswith(os.path.join("train", "cat", "0.jpg"))
    with_test = load_dataset(str(make_folder(tmp_path / "e", ("train", "val", "test"))))
    assert len(with_test.x_val) == len(with_test.x_test) == 12  # with test/, val/ is validation
    assert with_test.held_out()[2] is with_test.x_val


def test_decoding_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    pixels = _picture(1, 0, (40, 50))
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = decode(str(tmp_path / "a.png"), Preprocess.make((3, 32, 32), resize=40))
    assert image.dtype == np.uint8 and image.shape == (3, 32, 32)
    assert np.array_equal(image, pixels[4:36, 9:41].transpose(2, 0, 1))  # no resize: exact pixels
    grey = decode(str(tmp_path / "a.png"), Preprocess.make((1, 32, 32), resize=40))
    expected = np.asarray(Image.fromarray(pixels).convert("L"))[4:36, 9:41]
    assert np.array_equal(grey[0], expected)
    half = decode(str(tmp_path / "a.png"), Preprocess.make((3, 16, 16), resize=20))
    resized = np.asarray(Image.fromarray(pixels).resize((25, 20), Image.Resampling.BILINEAR))
    assert np.array_equal(half, resized[2:18, 4:20].transpose(2, 0, 1))


def test_images_follow_the_models_input_unless_given(tmp_path):
    folder = str(make_folder(tmp_path / "d"))
    data = load_dataset(folder)
    assert data.image_shape == (3, 224, 224)
    grey = data.fit_to((1, 16, 16))
    assert grey.x_train.shape == (12, 1, 16, 16) and grey.x_train.prep.resize == round(16 * 256 / 224)
    assert grey.x_train[0].shape == (1, 16, 16)
    resized = load_dataset(folder, resize=20).fit_to((3, 16, 16))
    assert resized.x_test.prep == Preprocess(3, (16, 16), 20)
    fixed = load_dataset(folder, shape=(3, 12, 12)).fit_to((3, 16, 16))
    assert fixed.x_train.shape == (12, 3, 12, 12)  # given: the model's check refuses a mismatch
    with pytest.raises(UserError, match="--resize 10 must be at least the crop's longer side"):
        load_dataset(folder, resize=10).fit_to((3, 16, 16))


def test_unreadable_images_are_skipped_by_name_and_counted(tmp_path, caplog):
    root = make_folder(tmp_path / "d")
    good = (root / "train" / "dog" / "0.jpg").read_bytes()
    (root / "train" / "dog" / "truncated.jpg").write_bytes(good[:len(good) // 2])
    (root / "train" / "cat" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (root / "train" / "emu" / "text.jpg").write_text("not an image")
    (root / "train" / "emu" / "notes.txt").write_text("ignored: not an image name")
    with caplog.at_level(logging.WARNING, logger="npdc"):
        data = load_dataset(str(root), shape=(3, 16, 16))
    assert len(data.x_train) == 12
    lines = [r.getMessage() for r in caplog.records]
    for name in ("truncated.jpg", "corrupt.png", "text.jpg"):
        assert any(name in line and "skipped" in line for line in lines), lines
    assert lines[-1].endswith("skipped 3 of 27 image files that could not be used")
    assert not any("notes.txt" in line for line in lines)
    fit(build_net({"arch": "cifar-resnet20", "input_shape": [3, 16, 16], "num_classes": 3}),
        data.x_train, data.y_train, 1, batch_size=6, progress=False)  # the loop never meets them


def _png_header_only(path, width, height):
    """A PNG whose header declares width x height and whose data is a few bytes."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(10_000, 10_000), (100_000, 100_000), (1, 1 << 30)])
def test_a_decompression_bomb_is_skipped_before_it_is_decoded(tmp_path, caplog, width, height):
    root = make_folder(tmp_path / "d")
    _png_header_only(root / "train" / "cat" / "bomb.png", width, height)
    with caplog.at_level(logging.WARNING, logger="npdc"):
        data = load_dataset(str(root), shape=(3, 16, 16))
    assert len(data.x_train) == 12
    assert any("bomb.png: skipped" in r.getMessage() for r in caplog.records)


def test_links_out_of_the_folder_and_to_folders_are_not_followed(tmp_path, caplog):
    outside = make_folder(tmp_path / "outside")
    root = make_folder(tmp_path / "d")
    os.symlink(outside / "train" / "cat" / "1.png", root / "train" / "cat" / "out.png")
    os.symlink(root / "train" / "dog" / "1.png", root / "train" / "cat" / "in.png")
    os.symlink(root / "train", root / "train" / "emu" / "loop")
    with caplog.at_level(logging.WARNING, logger="npdc"):
        data = load_dataset(str(root), shape=(3, 16, 16))
    names = [os.path.basename(f) for f in data.x_train.files]
    assert "in.png" in names and "out.png" not in names and len(names) == 13
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "out.png: skipped (a symbolic link out of the folder)" in text
    assert "loop: skipped (a symbolic link to a folder" in text
    at = names.index("in.png")
    os.remove(root / "train" / "cat" / "in.png")  # swapped after the scan: checked again
    os.symlink(outside / "train" / "cat" / "1.png", root / "train" / "cat" / "in.png")
    with pytest.raises(UserError, match="in.png: now leads out of"):
        data.x_train[at]


@pytest.mark.parametrize("case, message", [
    ("no classes", r"train: no class folders"),
    ("no images", r"train: no readable \.jpg or \.png images"),
    ("only broken", r"val: no readable \.jpg or \.png images"),
    ("classes differ", r"class folders of val/ differ from train/'s \(extra: fox; missing: emu\)"),
])
def test_an_unusable_folder_is_one_line(tmp_path, capsys, case, message):
    root = tmp_path / "d"
    if case == "no classes":
        (root / "train").mkdir(parents=True)
    elif case == "no images":
        for name in CLASSES:
            (root / "train" / name).mkdir(parents=True)
    else:
        make_folder(root, ("train",))
        for name in CLASSES if case == "only broken" else ("cat", "dog", "fox"):
            (root / "val" / name).mkdir(parents=True)
            (root / "val" / name / "x.png").write_bytes(b"broken")
    with pytest.raises(UserError, match=message):
        load_dataset(str(root))
    code, _, err = run_cli(["evaluate", "model.h5", "--data", str(root)], capsys)
    assert_one_line_error(code, err)


def test_a_flat_val_folder_names_a_few_missing_classes(tmp_path):
    root = make_folder(tmp_path / "d", ("train",))
    for i in range(7):
        (root / "train" / f"more{i}").mkdir()
    (root / "val").mkdir()
    with pytest.raises(UserError, match=r"missing: cat, dog, emu, more0, more1 and 5 more\)$"):
        load_dataset(str(root))


def test_without_pillow_one_line_says_what_to_install(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d")
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)
    with pytest.raises(UserError, match=r'install npdc\[images\].*pip install -e "\.\[images\]"'):
        load_dataset(str(root))


def test_batches_decode_only_what_they_ask_and_the_cache_is_bounded(tmp_path, monkeypatch):
    data = load_dataset(str(make_folder(tmp_path / "d")), shape=(3, 16, 16))
    calls = []
    real = imagefolder.decode
    monkeypatch.setattr(imagefolder, "decode", lambda path, prep: calls.append(path) or real(path, prep))
    x = data.x_train
    held = x.subset([1, 5, 7])
    assert calls == [] and len(held) == 3  # a selection decodes nothing
    batch = x[np.array([5, 1])]
    assert len(calls) == 2 and np.array_equal(batch[1], held[0])  # cached: no third decode
    assert len(calls) == 2
    monkeypatch.setenv("NPDC_IMAGE_CACHE", str(2 * 3 * 16 * 16))  # room for two images
    small = FolderImages(x.root, x.files, x.prep)
    calls.clear()
    for _ in range(2):
        small[:]
    assert len(calls) == 24 and small.cache.used <= 2 * 3 * 16 * 16  # nothing kept beyond two
    assert np.array_equal(small[:], np.asarray(x))


def test_training_on_a_folder_equals_training_on_its_decoded_arrays(tmp_path):
    data = load_dataset(str(make_folder(tmp_path / "d", per_class=6)), shape=(3, 16, 16))
    spec = {"arch": "cifar-resnet20", "input_shape": [3, 16, 16], "num_classes": 3}
    nets = []
    for x in (data.x_train, np.asarray(data.x_train), pickle.loads(pickle.dumps(data.x_train))):
        net = build_net(spec, seed=1)
        fit(net, x, data.y_train, 2, batch_size=5, lr=0.05, seed=3, progress=False)
        nets.append(net)
    for other in nets[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(nets[0].state_dict().values(),
                                                          other.state_dict().values()))
    assert evaluate(nets[0], data.x_test, data.y_test) == evaluate(nets[1], np.asarray(data.x_test), data.y_test)


def test_train_and_evaluate_commands_read_a_folder(tmp_path, capsys):
    root = str(make_folder(tmp_path / "d", ("train", "val")))
    model = str(tmp_path / "m.h5")
    code, out, err = run_cli(["train", "--arch", "cifar-resnet20", "--data", root, "--input-shape", "3,16,16",
                              "--resize", "18", "--mean", "0.3,0.3,0.3", "--std", "0.2,0.2,0.2",
                              "--epochs", "1", "--batch-size", "6", "--out", model, "--quiet"], capsys)
    assert code == 0, err
    assert "test accuracy" in out
    from npdc.io.modelfile import load_model

    net = load_model(model)
    assert net.in_shape == (3, 16, 16) and np.allclose(net.mean, 0.3) and np.allclose(net.std, 0.2)
    code, out, err = run_cli(["evaluate", model, "--data", root, "--resize", "18", "--json"], capsys)
    assert code == 0, err
    assert '"images": 12' in out
    code, _, err = run_cli(["evaluate", model, "--data", "fashion-mnist", "--resize", "30"], capsys)
    assert "apply to image folders" in assert_one_line_error(code, err)


def test_no_loop_reads_the_whole_folder_at_once(tmp_path, monkeypatch):
    """Training, evaluation, channel statistics, holding out, a run's key and the runtime all
    go batch by batch: turning the folder into one array fails here."""
    from npdc.engine.images import channel_stats
    from npdc.pipeline.run import run_key
    from npdc.pipeline.schedule import load_schedule
    from npdc.runtime.infer import load_runtime
    from tests.runtime.conftest import make_npdc

    data = load_dataset(str(make_folder(tmp_path / "d")), shape=(3, 16, 16))
    reference = np.asarray(data.x_test)
    monkeypatch.setattr(FolderImages, "__array__", lambda *a, **k: pytest.fail("decoded all at once"))
    spec = {"arch": "cifar-resnet20", "input_shape": [3, 16, 16], "num_classes": 3}
    net = make_npdc(tmp_path / "m.npdc", spec)
    x, y, x_val, _ = data.held_out(0.25)
    assert isinstance(x, FolderImages) and isinstance(x_val, FolderImages)
    fit(net, x, y, 1, batch_size=4, progress=False)
    assert np.isfinite(channel_stats(x, batch=5)[0]).all()
    assert 0 <= evaluate(net, data.x_test, data.y_test, batch_size=5)["accuracy"] <= 1
    runtime = load_runtime(tmp_path / "m.npdc", "sparse", 4)
    assert np.array_equal(runtime.predict(data.x_test), runtime.predict(reference))
    key = run_key(load_schedule(None, "fast"), tmp_path / "m.npdc", data)
    assert key == run_key(load_schedule(None, "fast"), tmp_path / "m.npdc",
                          load_dataset(str(tmp_path / "d"), shape=(3, 16, 16)))
    (tmp_path / "d" / "val" / "dog" / "1.png").write_bytes((tmp_path / "d" / "val" / "cat" / "1.png").read_bytes())
    assert key != run_key(load_schedule(None, "fast"), tmp_path / "m.npdc",
                          load_dataset(str(tmp_path / "d"), shape=(3, 16, 16)))
