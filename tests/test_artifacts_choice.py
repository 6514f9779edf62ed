"""`--artifacts auto` (the default) runs the directories outside tests/{worker,hardening,deploy} on a
directory store, and gives the environment back after an S3 module (tests/conftest.py)."""

from __future__ import annotations

import os

import pytest


def test_outside_the_service_directories_the_store_is_a_directory(request: pytest.FixtureRequest) -> None:
    if request.config.getoption("--artifacts") == "s3":
        assert os.environ["NCA_ARTIFACTS"].startswith("s3://")
    else:
        assert not os.environ["NCA_ARTIFACTS"].startswith("s3://") and "NCA_S3_ENDPOINT_URL" not in os.environ
