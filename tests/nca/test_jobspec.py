"""The job spec: one typed shape for a job's options, strict when read back, migrated from the old form."""

from __future__ import annotations

import dataclasses
import json

import pytest

from backend.nca import jobspec
from backend.nca.jobspec import DEFAULTS, OPTIONS, SPEC_VERSION, JobSpec, Limits, SpecError, spec_from_request
from backend.nca.options import option_of
from backend.nca.target import TargetError, TargetOptions
from backend.nca.train import TrainConfig


def test_every_option_field_is_a_job_option_and_round_trips_through_json() -> None:
    declared = {option_of(f).key or f.name for cls in (JobSpec, TrainConfig, TargetOptions)
                for f in dataclasses.fields(cls) if option_of(f)}
    assert {o.name for o in OPTIONS} == declared  # nothing listed by hand: new fields flow through
    spec = JobSpec.from_options({"name": "heart", "experiment": "growing", "iterations": 300, "target_size": 24,
                                 "fire_rate": 1, "background": "key"})
    train, target = spec.train, spec.target
    assert (train.iterations, train.fire_rate, target.size, target.background) == (300, 1.0, 24, "key")
    stored = json.loads(json.dumps(spec.options()))
    assert JobSpec.from_stored(stored, SPEC_VERSION) == spec
    assert stored["damage_count"] == 0  # resolved from the experiment, so the record says what trains


@pytest.mark.parametrize(("values", "words"), [
    ({"colour": "red"}, ["unknown option colour", "the options are"]),
    ({"iterations": "300"}, ["iterations must be an integer"]),
    ({"iterations": True}, ["iterations must be an integer"]),
    ({"background": "magic"}, ["background must be 'auto' or 'cutout'"]),
    ({"key_background": True}, ["unknown option key_background"]),
    ({"experiment": "dancing"}, ["experiment must be 'growing' or"]),
    ({"iterations": 0}, ["iterations must be at least 1"]),
    ({"lr": 0}, ["lr must be above 0"]),
    ({"min_steps": 20, "max_steps": 10}, ["min_steps must be below max_steps"]),
    ({"batch_size": 3}, ["batch_size must be at least 4", "regenerating experiment damages 3"]),
    ({"name": "x" * 81}, ["name must be at most 80 characters"]),
])
def test_bad_options_are_refused_with_the_option_named(values: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as raised:
        JobSpec.from_options(values)
    for word in words:
        assert word in str(raised.value)


def test_target_bounds_raise_target_errors_under_the_option_name() -> None:
    with pytest.raises(TargetError, match="target_size must be at most 128"):
        JobSpec.from_options({"target_size": 200})


def test_a_stored_spec_must_be_complete_and_of_a_known_version() -> None:
    options = JobSpec().options()
    del options["fire_rate"]
    with pytest.raises(SpecError, match="missing option fire_rate"):
        JobSpec.from_stored(options, SPEC_VERSION)
    with pytest.raises(SpecError, match="version 99"):
        JobSpec.from_stored(JobSpec().options(), 99)


def test_old_untyped_records_are_migrated() -> None:
    """What the API stored before the spec: its validated options, some null, some absent."""
    old = {"name": "heart", "experiment": "growing", "iterations": 300, "target_size": 24, "padding": 6,
           "seed": 7, "checkpoint_every": None, "lr": 0.002}
    spec = JobSpec.from_stored(old, 1)
    assert (spec.name, spec.train.experiment, spec.train.seed, spec.target.padding) == ("heart", "growing", 7, 6)
    assert spec.train.checkpoint_every == DEFAULTS["checkpoint_every"] and spec.train.damage_count == 0
    assert spec.target.background == "keep"  # what the image was trained on before `background` existed
    assert JobSpec.from_stored({**old, "key_background": True}, 1).target.background == "key"
    v2 = {**{k: v for k, v in JobSpec().options().items() if k != "background"}, "key_background": True}
    assert JobSpec.from_stored(v2, 2).target.background == "key"
    with pytest.raises(SpecError, match="unknown option colour"):
        JobSpec.from_stored({**old, "colour": "red"}, 1)


def test_train_config_from_dict_refuses_unknown_keys() -> None:
    assert TrainConfig.from_dict({"iterations": 5, "seed": None}).seed == 0  # None: the default
    with pytest.raises(ValueError, match="unknown training option size"):
        TrainConfig.from_dict({"iterations": 5, "size": 24})


def test_pool_memory_is_estimated_for_a_square_grid() -> None:
    spec = JobSpec.from_options({"experiment": "persistent", "pool_size": 1024, "target_size": 40, "padding": 16})
    assert spec.pool_megabytes() == pytest.approx(1024 * 16 * 72 * 72 * 4 / 2**20)
    assert JobSpec.from_options({"experiment": "growing"}).pool_megabytes() == 0


def test_an_option_added_later_gets_its_default_in_specs_stored_before_it(monkeypatch) -> None:
    """As if fire_rate were new (`option(..., since=3)`): version 2 specs lack it, version 3 ones must have it."""
    fire_rate = next(o for o in OPTIONS if o.name == "fire_rate")
    newer = dataclasses.replace(fire_rate, meta=dataclasses.replace(fire_rate.meta, since=3))
    monkeypatch.setattr(jobspec, "OPTIONS", tuple(newer if o is fire_rate else o for o in OPTIONS))
    monkeypatch.setattr(jobspec, "SPEC_VERSION", 3)
    stored = JobSpec().options()
    del stored["fire_rate"]
    assert JobSpec.from_stored(stored, 2).train.fire_rate == DEFAULTS["fire_rate"]
    with pytest.raises(SpecError, match="missing option fire_rate"):
        JobSpec.from_stored(stored, 3)


def test_docs_option_table_is_the_generated_one() -> None:
    from backend.nca.jobspec import markdown_option_table
    from tests.conftest import REPO_ROOT

    docs = (REPO_ROOT / "docs" / "api.md").read_text()
    assert markdown_option_table() in docs, "docs/api.md's option table is stale: paste markdown_option_table()"


def test_one_rule_for_every_request() -> None:
    """spec_from_request: the time budget against iterations, the server's caps, what it fills in; SpecError
    names the field."""
    from backend.nca.jobspec import Limits, spec_from_request

    limits = Limits(max_iterations=5000, max_minutes=60, max_pool_megabytes=1000, checkpoint_every=25)
    spec = spec_from_request({"minutes": 5}, limits, "photo", seed=3)
    assert (spec.name, spec.train.minutes, spec.train.iterations, spec.train.seed) == ("photo", 5, 5000, 3)
    assert (spec.train.batch_size, spec.train.pool_size, spec.train.checkpoint_every) == (4, 128, 25)  # the recipe
    assert spec_from_request({}, limits).train.iterations == 5000  # the default, within the cap
    assert spec_from_request({}, Limits()).train.checkpoint_every == DEFAULTS["checkpoint_every"] == 100
    assert spec_from_request({"key_background": True}, limits).target.background == "key"
    assert len({spec_from_request({}, limits).train.seed for _ in range(5)}) > 1  # random when not given
    for values, field, words in [({"minutes": 5, "iterations": 10}, "iterations", "not both"),
                                 ({"minutes": 61}, "minutes", "at most 60 minutes"),
                                 ({"iterations": 5001}, "iterations", "at most 5000 iterations"),
                                 ({"pool_size": 4096, "target_size": 128, "padding": 64}, "pool_size", "MB"),
                                 ({"key_background": True, "background": "keep"}, "background", "send only")]:
        with pytest.raises(SpecError, match=words) as error:
            spec_from_request(values, limits)
        assert error.value.field == field


def test_the_option_schema_serves_the_form_its_fields() -> None:
    from backend.nca.jobspec import Limits, option_schema

    schema = {entry["name"]: entry for entry in option_schema(Limits(max_iterations=5000, checkpoint_every=25))}
    assert "lr_decay" not in schema and "channels" not in schema  # command line only
    assert schema["iterations"]["default"] == 5000 and schema["iterations"]["max"] == 5000
    assert schema["checkpoint_every"]["default"] == 25 and schema["seed"]["default"] is None  # the server picks one
    patience = schema["early_stop_patience"]
    assert (patience["kind"], patience["default"], patience["min"], patience["nullable"]) == ("integer", None, 1, True)
    assert schema["background"]["choices"] == ["auto", "cutout", "key", "keep"] and schema["lr"]["above"] == 0


def test_the_paper_preset_is_the_papers_recipe_bit_for_bit() -> None:
    """The authors' numbers, written out: a new option (start_from, damage shapes, budgets) must not move them."""
    from dataclasses import asdict

    from backend.nca.train import PRESETS

    spec = JobSpec.from_options({**PRESETS["paper"]})
    assert spec.start_from is None
    assert asdict(spec.train) == {
        "experiment": "regenerating", "iterations": 8000, "batch_size": 8, "pool_size": 1024, "min_steps": 64,
        "max_steps": 96, "lr": 2e-3, "lr_decay_at": 2000, "lr_decay": 0.1, "use_pool": True, "damage_count": 3,
        "channels": 16, "hidden": 128, "fire_rate": 0.5, "seed": 0, "checkpoint_every": 100, "minutes": None,
        "early_stop_patience": None, "damage": "circle", "fast": True}
    assert (spec.target.size, spec.target.padding) == (40, 16)


def test_a_time_budget_starts_from_the_servers_starter_where_it_applies() -> None:
    """The starter is the default start of a time budget of the starter's shape on a target of at least
    STARTER_MIN_SIZE cells, recorded as the job's start_from; a request's own start_from, the paper recipe (no
    budget), a smaller target, another shape or a server without a starter never get it."""
    from backend.nca.jobspec import STARTER_MIN_SIZE

    limits = Limits(starter="example-starter")
    assert spec_from_request({"minutes": 5.0}, limits).start_from == "example-starter"
    assert spec_from_request({"minutes": 5.0}, Limits()).start_from is None  # no starter configured
    assert spec_from_request({"minutes": 5.0, "start_from": "example-heart"}, limits).start_from == "example-heart"
    assert spec_from_request({}, limits).start_from is None  # the paper recipe
    assert spec_from_request({"iterations": 500}, limits).start_from is None
    small = {"minutes": 5.0, "target_size": STARTER_MIN_SIZE - 1, "padding": 6}
    assert spec_from_request(small, limits).start_from is None
    assert spec_from_request({"minutes": 5.0, "hidden": 64}, limits).start_from is None  # another shape


def test_the_paper_preset_stays_the_papers_recipe_with_a_starter_configured() -> None:
    """A server with a starter trains the paper recipe exactly as before: same spec, random weights of its seed."""
    import torch

    from backend.nca.model import NCA

    with_starter = spec_from_request({}, Limits(starter="example-starter"), seed=7)
    assert with_starter == spec_from_request({}, Limits(), seed=7)
    assert with_starter.start_from is None
    trainer = with_starter.trainer(torch.zeros(4, 72, 72))
    torch.manual_seed(7)
    reference = NCA(16, 128, 0.5)
    for name, value in reference.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value), name


def test_the_shipped_starter_is_of_the_default_shape_and_saw_only_its_own_drawing(tmp_path) -> None:
    """models/starter.safetensors (benchmarks/starter.py on scripts/make_examples.py's pebble): the shape a
    default job has (else every budget would be refused), 40 cells as measured, and its target is the pebble,
    not one of the drawings its benefit was measured on (fish, house)."""
    import sys
    from pathlib import Path

    import torch

    from backend.nca import modelfile
    from backend.nca.target import load_target

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "scripts"))
    from make_examples import draw

    mf = modelfile.load(root / "models" / "starter.safetensors")
    assert (mf.info.channels, mf.info.hidden) == (DEFAULTS["channels"], DEFAULTS["hidden"])
    assert (mf.info.target_size, mf.info.padding) == (40, 16) and mf.info.extra["start_from"] == "example-heart"
    options = TargetOptions(size=40, padding=16)
    out = tmp_path
    assert torch.allclose(mf.target, load_target(draw("pebble", out), options), atol=1e-6)
    for unseen in ("fish", "house"):
        assert not torch.allclose(mf.target, load_target(draw(unseen, out), options), atol=0.05)
