"""`--artifacts auto` (the default) runs this directory's services on the S3 server (tests/conftest.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


def test_this_directory_runs_on_s3_under_auto(request: pytest.FixtureRequest) -> None:
    chosen = request.config.getoption("--artifacts")
    if chosen == "dir" or not (Path(sys.executable).parent / "rclone").exists():
        assert not os.environ["NCA_ARTIFACTS"].startswith("s3://")
    else:
        assert os.environ["NCA_ARTIFACTS"].startswith("s3://") and os.environ["NCA_S3_ENDPOINT_URL"]
