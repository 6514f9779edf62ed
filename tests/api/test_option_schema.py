"""The job spec owns the options: /api/config serves its schema for the form, a new option (early_stop_patience)
goes through the API with no API code of its own, and a bad request is a 422 naming the field."""

from __future__ import annotations

from fastapi.testclient import TestClient

from backend.nca.jobspec import OPTIONS
from tests.api.test_bad_input import assert_error, png_image, post_job


def test_config_serves_every_api_option_with_this_servers_limits(client: TestClient) -> None:
    config = client.get("/api/config").json()
    options = {entry["name"]: entry for entry in config["options"]}
    assert set(options) == {opt.name for opt in OPTIONS if opt.meta.api}
    assert options["iterations"]["max"] == 5000 and options["iterations"]["default"] == 5000  # NCA_MAX_ITERATIONS
    assert options["checkpoint_every"]["default"] == 25 == config["defaults"]["checkpoint_every"]
    assert config["defaults"]["seed"] is None and config["defaults"]["name"] is None  # the server chooses them
    patience = options["early_stop_patience"]
    assert (patience["kind"], patience["default"], patience["min"]) == ("integer", None, 1)
    assert "loss" in patience["help"]


def test_a_new_option_goes_through_and_bad_values_name_the_field(client: TestClient) -> None:
    response = post_job(client, png_image(), experiment="growing", iterations=10, target_size=8, padding=2,
                        early_stop_patience=7)
    assert response.status_code == 202, response.text
    assert response.json()["options"]["early_stop_patience"] == 7
    assert_error(post_job(client, png_image(), early_stop_patience=0), 422, "early_stop_patience")
    assert_error(post_job(client, png_image(), minutes=5, iterations=10), 422, "invalid options",
                 "minutes or iterations, not both")
    assert_error(post_job(client, png_image(), min_steps=50, max_steps=40), 422, "invalid options",
                 "min_steps must be below max_steps")
