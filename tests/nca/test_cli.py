"""The command line as a user runs it: `python -m backend.nca train|grow|import-distill`."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from backend.nca import modelfile
from tests.conftest import DISTILL_MODELS, REPO_ROOT
from tests.helpers import synthetic_photo


def nca(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.nca", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=240)


def test_train_then_grow_gif_and_strip(disc_image, tmp_path):
    image, out = tmp_path / "disc.png", tmp_path / "disc.safetensors"
    disc_image.save(image)
    result = nca("train", str(image), "--out", str(out), "--experiment", "persistent", "--size", "10",
                 "--padding", "3", "--iterations", "12", "--batch-size", "2", "--pool-size", "8",
                 "--min-steps", "8", "--max-steps", "10", "--checkpoint-every", "5", "--tensorboard",
                 str(tmp_path / "tb"), "--video-every", "10")
    assert result.returncode == 0, result.stderr
    assert "succeeded after 12 iterations" in result.stdout
    mf = modelfile.load(out)
    assert mf.info.iterations == 12 and mf.info.experiment == "persistent" and mf.info.padding == 3
    assert (mf.info.grid_height, mf.info.grid_width) == (5 + 6, 10 + 6)
    assert mf.target.shape == (4, 11, 16) and mf.optimizer_state
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 1000  # loss scalars, target image and growth GIFs

    result = nca("train", str(image), "--out", str(out), "--size", "10", "--padding", "3", "--iterations", "15",
                 "--batch-size", "2", "--pool-size", "8", "--min-steps", "8", "--max-steps", "10",
                 "--experiment", "persistent", "--resume")
    assert result.returncode == 0, result.stderr
    assert modelfile.load(out).info.iterations == 15

    gif = tmp_path / "g.gif"
    result = nca("grow", str(out), "--steps", "7", "--frame-every", "3", "--scale", "3", "--out", str(gif))
    assert result.returncode == 0, result.stderr
    with Image.open(gif) as img:
        assert img.n_frames == 4  # steps 0, 3, 6 and the last one, 7
        assert img.size == (16 * 3, 11 * 3)
    strip = tmp_path / "s.png"
    assert nca("grow", str(out), "--steps", "4", "--frame-every", "2", "--scale", "2", "--out", str(strip),
               "--damage-at", "2", "--angle", "45").returncode == 0
    with Image.open(strip) as img:
        assert img.size == (16 * 2 * 3, 11 * 2)


@pytest.mark.parametrize(("flags", "background", "warning"), [
    ([], "cutout", None),  # the default: a photo's subject is cut out
    (["--background", "keep"], "keep", "no transparent background"),
    (["--key-background"], "key", "not one plain colour"),  # the old flag still works, and a busy photo warns
])
def test_train_treats_a_photos_background(tmp_path, flags, background, warning):
    image, out = tmp_path / "photo.jpg", tmp_path / "photo.safetensors"
    synthetic_photo().save(image)
    result = nca("train", str(image), "--out", str(out), "--experiment", "growing", "--size", "16", "--padding", "2",
                 "--iterations", "1", "--batch-size", "1", "--min-steps", "2", "--max-steps", "3", *flags)
    assert result.returncode == 0, result.stderr
    assert f"background {background}" in result.stderr
    assert (warning in result.stderr) if warning else "warning" not in result.stderr
    alpha = modelfile.load(out).target[3, 2:-2, 2:-2]  # inside the padding
    assert (alpha.min() < 1) == (background != "keep")  # only "keep" leaves the whole rectangle opaque


def test_grow_frames_are_the_exact_rendered_grid(tmp_path):
    from backend.nca.fast import grow
    from backend.nca.model import NCA, make_seed
    from backend.nca.render import rgb8

    model = NCA()
    with torch.no_grad():
        model.hidden_to_update.bias[:4] = 0.05  # grows a little every step
    modelfile.save(modelfile.ModelFile(model, modelfile.ModelInfo(grid_height=9, grid_width=9)), tmp_path / "m.st")
    strip = tmp_path / "s.png"
    assert nca("grow", str(tmp_path / "m.st"), "--steps", "5", "--frame-every", "5", "--scale", "1", "--out",
               str(strip)).returncode == 0
    frames = torch.from_numpy(np.array(Image.open(strip).convert("RGB")))
    last = frames[:, 9:18]
    x = grow(model, make_seed(9, 9), 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(last, torch.from_numpy(rgb8(x)))


def test_bad_inputs_give_clear_errors(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    result = nca("train", str(text), "--out", str(tmp_path / "x.safetensors"))
    assert result.returncode == 2 and "not a readable image" in result.stderr
    result = nca("grow", str(text), "--steps", "3", "--out", str(tmp_path / "x.gif"))
    assert result.returncode == 2 and "not a model file" in result.stderr
    result = nca("grow", str(tmp_path / "missing.safetensors"), "--steps", "3", "--out", str(tmp_path / "x.gif"))
    assert result.returncode == 2 and "no such file" in result.stderr


def test_video_every_zero_is_refused_before_training(disc_image, tmp_path):
    """`--video-every 0` used to train one iteration and then die dividing by zero."""
    image = tmp_path / "disc.png"
    disc_image.save(image)
    result = nca("train", str(image), "--out", str(tmp_path / "m.safetensors"), "--size", "10", "--iterations", "2",
                 "--tensorboard", str(tmp_path / "tb"), "--video-every", "0")
    assert result.returncode != 0 and "--video-every" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("option", [["--height", "-1"], ["--width", "0"], ["--scale", "0"], ["--frame-every", "0"],
                                    ["--steps", "-2"], ["--frame-ms", "0"]])
def test_grow_refuses_impossible_numbers_clearly(option, tmp_path):
    from backend.nca.model import NCA

    modelfile.save(modelfile.ModelFile(NCA(), modelfile.ModelInfo(grid_height=9, grid_width=9)), tmp_path / "m.st")
    args = ["grow", str(tmp_path / "m.st"), "--steps", "3", "--out", str(tmp_path / "x.gif"), *option]
    result = nca(*args)
    assert result.returncode == 2 and option[0] in result.stderr and "must be at least" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.gif").exists()


@pytest.mark.skipif(not DISTILL_MODELS.is_dir(), reason="../shared/reference is absent")
def test_import_distill(tmp_path):
    out = tmp_path / "lizard.safetensors"
    result = nca("import-distill", str(DISTILL_MODELS / "regenerating_lizard.json"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    mf = modelfile.load(out)
    assert mf.info.source == "distill" and mf.info.experiment == "regenerating" and mf.info.name == "lizard"
    assert (mf.info.grid_height, mf.info.grid_width) == (72, 72)


def test_preset_preview_sets_the_small_recipe_and_flags_still_win(disc_image, tmp_path):
    image, out = tmp_path / "disc.png", tmp_path / "p.safetensors"
    disc_image.save(image)
    result = nca("train", str(image), "--out", str(out), "--preset", "preview", "--iterations", "2",
                 "--batch-size", "4", "--pool-size", "8", "--padding", "5")
    assert result.returncode == 0, result.stderr
    info = modelfile.load(out).info
    config = info.extra["train_config"]
    assert (info.target_size, info.padding, info.iterations) == (24, 5, 2)  # preset size, explicit padding
    assert (config["min_steps"], config["max_steps"], config["lr_decay_at"]) == (32, 48, 1000)
    assert (info.grid_height, info.grid_width) == (12 + 10, 24 + 10)


def test_train_with_a_time_budget_plans_and_stops_on_time(disc_image, tmp_path):
    image, out = tmp_path / "disc.png", tmp_path / "b.safetensors"
    disc_image.save(image)
    result = nca("train", str(image), "--out", str(out), "--minutes", "0.05", "--size", "10", "--padding", "3",
                 "--min-steps", "8", "--max-steps", "12", "--experiment", "persistent")
    assert result.returncode == 0, result.stderr
    assert "in 0.1 min" in result.stdout or "in 0.0 min" in result.stdout
    info = modelfile.load(out).info
    plan, config = info.extra["plan"], info.extra["train_config"]
    assert config["minutes"] == 0.05 and (config["batch_size"], config["pool_size"]) == (4, 128)  # budget recipe
    assert plan["iterations"] == info.iterations == info.total_iterations > 0 and plan["short_steps"] == [4, 6]
    assert 3.0 <= info.extra["trained_seconds"] < 4.5


def test_train_refuses_a_budget_and_iterations_together(disc_image, tmp_path):
    image = tmp_path / "disc.png"
    disc_image.save(image)
    result = nca("train", str(image), "--out", str(tmp_path / "x.safetensors"), "--minutes", "1",
                 "--iterations", "10")
    assert result.returncode == 2 and "error (--iterations): send minutes or iterations, not both" in result.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_train_init_starts_from_a_model_and_refuses_another_shape(disc_image, tmp_path):
    """--init MODEL: the run starts from its weights (a tiny learning rate keeps them), the file says so."""
    image, out = tmp_path / "disc.png", tmp_path / "forked.safetensors"
    disc_image.save(image)
    common = ["train", str(image), "--out", str(out), "--size", "10", "--padding", "3", "--iterations", "1",
              "--batch-size", "2", "--pool-size", "8", "--min-steps", "8", "--max-steps", "10", "--lr", "1e-9",
              "--experiment", "persistent"]
    result = nca(*common, "--init", "example-heart")
    assert result.returncode == 0, result.stderr
    forked, source = modelfile.load(out), modelfile.load(REPO_ROOT / "models" / "heart.safetensors")
    assert forked.info.extra["start_from"] == "example-heart"
    for key, value in source.model.state_dict().items():
        torch.testing.assert_close(forked.model.state_dict()[key], value, atol=1e-6, rtol=0)
    assert forked.model.hidden_to_update.weight.abs().max() > 1e-3  # not a fresh rule (its last layer is zero)

    narrow = tmp_path / "narrow.safetensors"
    modelfile.save(modelfile.ModelFile(modelfile.NCA(hidden=32), modelfile.ModelInfo(hidden=32)), narrow)
    result = nca(*common, "--init", str(narrow))
    assert result.returncode == 2
    assert "(--start-from)" in result.stderr and "hidden 32 (this job: 128)" in result.stderr
    result = nca(*common, "--init", str(tmp_path / "missing.safetensors"))
    assert result.returncode == 2 and "no model file" in result.stderr
