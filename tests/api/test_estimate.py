"""Time budgets at the API: bad budgets are 422s naming the field, the estimate's answers, the form's lead."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.test_bad_input import assert_error, post_job
from tests.conftest import TINY_TRAINING, png_image


@pytest.mark.parametrize(("minutes", "words"), [
    ("0", ("minutes", "greater than 0")), ("-5", ("minutes", "greater than 0")), ("nan", ("minutes", "finite")),
    ("inf", ("minutes", "finite")), ("721", ("minutes", "at most 720")), ("ten", ("minutes", "number")),
])
def test_a_bad_budget_is_refused_naming_the_field_and_its_range(client: TestClient, minutes: str,
                                                                words: tuple[str, ...]) -> None:
    before = client.get("/api/jobs").json()["total"]
    assert_error(post_job(client, png_image(), **TINY_TRAINING, minutes=minutes), 422, *words)
    assert_error(client.post("/api/estimate", json={"minutes": minutes}), 422, *words)
    assert client.get("/api/jobs").json()["total"] == before  # nothing stored


def test_minutes_and_iterations_together_are_refused(client: TestClient) -> None:
    assert_error(post_job(client, png_image(), **TINY_TRAINING, minutes=5, iterations=100), 422,
                 "minutes or iterations, not both")
    assert_error(client.post("/api/estimate", json={"minutes": 5, "iterations": 100}), 422, "not both")


def test_a_budgeted_job_stores_its_budget_and_the_budget_recipe(client: TestClient) -> None:
    tiny = {k: v for k, v in TINY_TRAINING.items() if k not in ("batch_size", "experiment")}
    response = post_job(client, png_image(), **tiny, experiment="regenerating", minutes=2.5)
    assert response.status_code == 202, response.text
    options = response.json()["options"]
    assert options["minutes"] == 2.5 and options["iterations"] == 5000  # the server's cap bounds the plan
    assert (options["batch_size"], options["pool_size"], options["damage_count"]) == (4, 128, 1)
    client.post(f"/api/jobs/{response.json()['id']}/cancel")


def test_without_a_worker_the_estimate_says_so_and_the_form_leads_with_a_budget(client: TestClient) -> None:
    answer = client.post("/api/estimate", json={"target_size": 40}).json()
    assert answer["workers"] == 0 and answer["seconds"] is None and answer["device"] is None
    config = client.get("/api/config").json()
    assert config["default_budget"] == "good" and config["budgets"] == {"quick": 5.0, "good": 20.0}
    assert config["budget_defaults"] == {"batch_size": 4, "pool_size": 128}
    assert config["limits"]["minutes"]["maximum"] == 720 and config["defaults"]["minutes"] is None
