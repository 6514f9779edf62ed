"""The frontend's one module of shared words (frontend/js/formats.js) says what the backend says: the job
statuses in which a job still trains, every status's phrase, and the job-id grammar. Read as text: no
browser needed, so it runs (and fails) even where chromium is missing."""

from __future__ import annotations

import json
import re
import typing

from backend.storage.jobs import FINISHED, JOB_ID_PATTERN, JobStatus
from tests.helpers import REPO_ROOT

FORMATS = (REPO_ROOT / "frontend" / "js" / "formats.js").read_text()


def test_training_statuses_are_the_ones_that_are_not_finished() -> None:
    listed = re.search(r"export const TRAINING = Object\.freeze\((\[[^\]]*\])\);", FORMATS)
    assert listed is not None, "formats.js lost its TRAINING list"
    training = json.loads(listed.group(1).replace("'", '"'))
    assert set(training) == set(typing.get_args(JobStatus)) - set(FINISHED)


def test_every_status_has_its_phrase() -> None:
    table = FORMATS[FORMATS.index("export const STATUS_TEXT"):]
    table = table[: table.index("});")]
    assert set(re.findall(r"(\w+): '", table)) == set(typing.get_args(JobStatus))


def test_the_job_id_grammar_is_the_stores() -> None:
    pattern = re.search(r"export const JOB_ID = /(.+)/;", FORMATS)
    assert pattern is not None and pattern.group(1) == JOB_ID_PATTERN
