"""Model files: bit-exact round trip, atomic writes, no unpickling, tampering detected."""

import json
import os

import pytest
import torch

from backend.nca import modelfile
from backend.nca.model import NCA
from backend.nca.modelfile import ModelFile, ModelFileError, ModelInfo


def trained_like_model() -> ModelFile:
    torch.manual_seed(3)
    model = NCA(channels=12, hidden=32, fire_rate=0.4)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    target = torch.rand(4, 10, 14)
    info = ModelInfo(grid_height=10, grid_width=14, target_size=8, padding=3, experiment="persistent",
                     iterations=42, total_iterations=100, final_loss=0.0123, name="thing")
    optimizer_state = {"perceive_to_hidden.weight.exp_avg": torch.rand(32, 36, 1, 1), "perceive_to_hidden.weight.step":
                       torch.tensor(42.0)}
    return ModelFile(model, info, target, optimizer_state)


def test_round_trip_is_bit_exact(tmp_path):
    mf = trained_like_model()
    path = tmp_path / "m.safetensors"
    modelfile.save(mf, path)
    back = modelfile.load(path)
    for (name, a), (_, b) in zip(mf.model.state_dict().items(), back.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(back.target, mf.target)
    assert back.info.channels == 12 and back.info.hidden == 32 and back.info.fire_rate == 0.4
    assert back.info.experiment == "persistent" and back.info.iterations == 42
    assert back.info.final_loss == 0.0123 and back.info.grid_width == 14 and back.info.padding == 3
    assert torch.equal(back.optimizer_state["perceive_to_hidden.weight.exp_avg"],
                       mf.optimizer_state["perceive_to_hidden.weight.exp_avg"])
    assert modelfile.read_metadata(modelfile.to_bytes(back)) == modelfile.read_metadata(modelfile.to_bytes(mf))


def test_file_is_plain_safetensors_with_documented_names():
    from safetensors.torch import load

    data = modelfile.to_bytes(trained_like_model())
    tensors = load(data)
    assert tensors["perceive_to_hidden.weight"].shape == (32, 36)
    assert tensors["hidden_to_update.weight"].shape == (12, 32)
    assert tensors["target"].shape == (4, 10, 14)
    meta = modelfile.read_metadata(data)
    assert meta["format"] == "growing-nca" and json.loads(meta["info"])["channels"] == 12


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    modelfile.save(trained_like_model(), path)
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        modelfile.save(ModelFile(NCA(), ModelInfo()), path)
    assert path.read_bytes() == before  # the old file is intact, never half-written
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_tampered_weights_are_rejected():
    data = bytearray(modelfile.to_bytes(trained_like_model()))
    data[-5] ^= 0x01  # flip one bit in the tensor data
    with pytest.raises(ModelFileError, match="checksum"):
        modelfile.from_bytes(bytes(data))


def test_tampered_metadata_is_rejected():
    data = modelfile.to_bytes(trained_like_model())
    forged = data.replace(b'\\"fire_rate\\": 0.4', b'\\"fire_rate\\": 0.9')  # same length, header still valid
    assert forged != data and modelfile.read_metadata(forged)
    with pytest.raises(ModelFileError, match="checksum"):
        modelfile.from_bytes(forged)


@pytest.mark.parametrize("data", [b"", b"12345678", b"\xff" * 64, b"PK\x03\x04 a pickle in a zip"],
                         ids=["empty", "short", "garbage", "zip"])
def test_corrupt_files_are_rejected_with_a_clear_error(data):
    with pytest.raises(ModelFileError, match="not a"):
        modelfile.from_bytes(data)


def test_truncated_file_is_rejected():
    data = modelfile.to_bytes(trained_like_model())
    with pytest.raises(ModelFileError):
        modelfile.from_bytes(data[: len(data) - 100])


def test_foreign_safetensors_and_torch_pickles_are_rejected(tmp_path):
    from safetensors.torch import save

    with pytest.raises(ModelFileError, match="growing-nca"):
        modelfile.from_bytes(save({"w": torch.zeros(3)}))
    pickle_path = tmp_path / "evil.pt"
    torch.save(NCA().state_dict(), pickle_path)  # a pickle: must never be unpickled
    with pytest.raises(ModelFileError):
        modelfile.load(pickle_path)


def test_wrong_shapes_in_metadata_are_rejected():
    mf = trained_like_model()
    mf.model.channels = 16  # metadata now disagrees with the tensors
    with pytest.raises(ModelFileError, match="shape"):
        modelfile.from_bytes(modelfile.to_bytes(mf))


def test_absurd_sizes_in_metadata_are_rejected_before_anything_is_allocated():
    """The header's `hidden`/`channels` must not size an allocation: a file claiming a network of
    2**40 hidden units is refused by the shape check, not by a failed (or fatal) allocation."""
    mf = trained_like_model()
    mf.model.hidden = 2**40  # what the metadata will say; the tensors stay 32 wide
    with pytest.raises(ModelFileError, match="shape"):
        modelfile.from_bytes(modelfile.to_bytes(mf))
