"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis, hypothesis).

Every operation gets generated valid and invalid inputs; no answer may be a server error and every
answer must match the schema (status code, content type, headers, body). Redis is up throughout,
so the documented 503 must not appear either. Bounded to a few dozen examples per operation.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter

import pytest
import redis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from backend.api.main import create_app
from backend.config import Settings
from tests.conftest import REPO_ROOT

MAX_EXAMPLES = int(os.environ.get("NCA_FUZZ_EXAMPLES", "40"))  # per operation and mode
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def api_app(redis_url: str, tmp_path_factory: pytest.TempPathFactory):
    redis.Redis.from_url(redis_url).flushdb()
    models = tmp_path_factory.mktemp("fuzz-models")
    for example in sorted((REPO_ROOT / "models").glob("*.safetensors"))[:1]:  # one real example to download
        (models / example.name).write_bytes(example.read_bytes())
    return create_app(Settings(redis_url=redis_url, models_dir=models, max_upload_bytes=200_000,
                               max_iterations=50, max_active_jobs=1000, max_active_jobs_per_client=1000))


def fuzz(operation, mode: GenerationMode, statuses: Counter) -> None:
    """MAX_EXAMPLES generated requests; an operation without invalid inputs (no parameters) is skipped."""
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def run(case) -> None:
        response = case.call_and_validate(checks=CHECKS)
        statuses[response.status_code] += 1

    with contextlib.suppress(Unsatisfiable):
        run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_api_conforms_to_its_schema(api_app, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    failures, statuses = [], Counter()
    for operation in operations:
        try:
            fuzz(operation, mode, statuses)
        except Exception as exc:  # collect them all: one report for every operation
            failures.append(f"{operation.label}: {exc}")
    print(f"{mode.value}: {sum(statuses.values())} requests, status codes {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(failures)
    assert not any(code >= 500 for code in statuses)


def test_schema_lists_the_security_answers(api_app) -> None:
    paths = api_app.openapi()["paths"]
    assert {"401", "429"} <= set(paths["/api/jobs"]["post"]["responses"])
    assert "401" in paths["/api/jobs/{job_id}/cancel"]["post"]["responses"]


def test_huge_list_offset_is_a_clear_422(api_app) -> None:
    """Found by the fuzzer: an offset past Redis's 64-bit range used to raise a server error."""
    with TestClient(api_app) as client:
        response = client.get("/api/jobs", params={"offset": 2**63 - 19, "limit": 20})
        assert response.status_code == 422 and "offset" in response.json()["detail"]
