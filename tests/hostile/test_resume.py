"""Resume only what is the same: the checkpoint key holds the schedule and the sha256 of the
model file and of the dataset; a changed one, or a damaged state.json, starts over with a notice;
a missing or new output re-encodes from the last checkpoint."""

import json

import pytest

from npdc.io.datasets import load_dataset
from npdc.io.modelfile import save_model
from npdc.pipeline.run import Checkpoints, run, run_key
from npdc.pipeline.schedule import load_schedule
from tests.conftest import write_tiny_dataset
from tests.hostile import files


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from npdc.engine.train import train_model

    folder = tmp_path_factory.mktemp("resume")
    write_tiny_dataset(folder / "d.npz", 96, 30)
    data = load_dataset(str(folder / "d.npz"))
    net, _ = train_model(files.SPEC, data.x_train, data.y_train, 1, batch_size=16, progress=False)
    save_model(folder / "m.h5", net)
    (folder / "s.toml").write_text("batch_size = 16\n[prune]\ntarget = 50\nepochs = 1\n[quantize]\nepochs = 1\n")
    return folder, data, load_schedule(folder / "s.toml", "fast")


def test_the_key_changes_with_the_model_bytes_and_the_dataset(tiny, tmp_path):
    folder, data, schedule = tiny
    model = tmp_path / "m.h5"
    model.write_bytes((folder / "m.h5").read_bytes())
    key = run_key(schedule, model, data)
    assert run_key(schedule, model, data) == key
    notes = []
    Checkpoints(tmp_path / "work", key, notes.append).mark("baseline", {"accuracy": 0.5})
    assert Checkpoints(tmp_path / "work", key, notes.append).done == {"baseline": {"accuracy": 0.5}}
    assert notes == []
    with open(model, "ab") as f:  # same name, same schedule, other content
        f.write(b"\0")
    changed = run_key(schedule, model, data)
    assert changed["model"] != key["model"] and changed["schedule"] == key["schedule"]
    assert Checkpoints(tmp_path / "work", changed, notes.append).done == {}
    assert len(notes) == 1 and "starting over" in notes[0] and "model" in notes[0]
    other = load_dataset(str(folder / "d.npz"))
    other.x_test[0, 0, 0, 0] ^= 1
    assert run_key(schedule, folder / "m.h5", other)["data"] != run_key(schedule, folder / "m.h5", data)["data"]


@pytest.mark.parametrize("text", ["{not json", "[]", '{"key": 1, "done": [1]}', "\udcff"])
def test_a_damaged_state_is_a_fresh_start_with_a_notice(tmp_path, text):
    work = tmp_path / "work"
    work.mkdir()
    (work / "state.json").write_text(text, errors="surrogateescape")
    notes = []
    ck = Checkpoints(work, {"schedule": "a"}, notes.append)
    assert ck.done == {} and len(notes) == 1 and "starting over" in notes[0] and "\n" not in notes[0]
    ck.mark("baseline", {"accuracy": 1.0})
    assert json.loads((work / "state.json").read_text())["done"] == {"baseline": {"accuracy": 1.0}}


def test_a_missing_or_new_output_is_encoded_again(tiny, tmp_path):
    folder, data, schedule = tiny
    out, work, notes = tmp_path / "m.npdc", tmp_path / "work", []
    run(folder / "m.h5", data, schedule, out, work, progress=False, log=notes.append)
    first = out.read_bytes()
    state = json.loads((work / "state.json").read_text())
    assert set(state["done"]) == {"baseline", "prune", "bits", "quantize", "encode", "verify"}
    out.unlink()
    notes.clear()
    run(folder / "m.h5", data, schedule, out, work, progress=False, log=notes.append)
    assert out.read_bytes() == first
    assert any("re-encoding" in n for n in notes) and not any("starting over" in n for n in notes)
    elsewhere = tmp_path / "other.npdc"
    notes.clear()
    run(folder / "m.h5", data, schedule, elsewhere, work, progress=False, log=notes.append)
    assert elsewhere.read_bytes() == first and any("re-encoding" in n for n in notes)
    assert json.loads((work / "state.json").read_text())["out"] == str(elsewhere.resolve())
