"""The artifact store's contract, run against both backends: a local directory and a real S3-protocol
server (rclone serve s3, started by the `s3_server` fixture)."""

from __future__ import annotations

import pytest

from backend.storage.artifacts import ArtifactCorrupt, ArtifactMissing, ArtifactUnavailable, artifact_store, sha256


def test_put_returns_the_sha256_and_get_verifies_it(artifacts) -> None:
    digest = artifacts.put("job1/target", b"weights" * 1000)
    assert digest == sha256(b"weights" * 1000)
    assert artifacts.get("job1/target", digest) == b"weights" * 1000
    artifacts.put("job1/target", b"replaced")  # a rewrite replaces the object
    assert artifacts.get("job1/target") == b"replaced"


def test_a_changed_object_is_reported_corrupt_not_returned(artifacts) -> None:
    digest = artifacts.put("job1/model", b"the real bytes")
    artifacts.put("job1/model", b"tampered bytes")  # as a bad disk or an operator's copy would
    with pytest.raises(ArtifactCorrupt, match="checksum"):
        artifacts.get("job1/model", digest)


def test_a_missing_object_is_a_clear_error(artifacts) -> None:
    with pytest.raises(ArtifactMissing, match="job9/model.*missing"):
        artifacts.get("job9/model", sha256(b"x"))


def test_delete_job_removes_every_object_of_that_job_only(artifacts) -> None:
    artifacts.put("job1/target", b"t")
    artifacts.put("job1/history/100", b"h")
    artifacts.put("job1/renders/video.mp4", b"v")
    artifacts.put("job2/target", b"other")
    assert sorted(key for key, _ in artifacts.objects()) == ["job1/history/100", "job1/renders/video.mp4",
                                                             "job1/target", "job2/target"]
    assert [key for key, _ in artifacts.objects("job1/h")] == ["job1/history/100"]
    assert artifacts.delete_job("job1") == 3
    assert [key for key, _ in artifacts.objects()] == ["job2/target"]
    with pytest.raises(ArtifactMissing):
        artifacts.get("job1/history/100")
    assert artifacts.get("job2/target") == b"other"
    assert artifacts.delete_job("job1") == 0  # twice is fine (a retried DELETE)
    artifacts.delete("job2/target")
    artifacts.delete("job2/target")


@pytest.mark.parametrize("key", ["../escape", "/abs/path", "job1/../../x", "", "job1//x"])
def test_keys_that_could_escape_are_refused(artifacts, key: str) -> None:
    with pytest.raises(ValueError, match="bad artifact key"):
        artifacts.put(key, b"x")


def test_the_store_answers_ping(artifacts) -> None:
    artifacts.ping()


def test_an_unreachable_s3_store_is_unavailable_not_a_crash(s3_server: str) -> None:
    from tests.conftest import S3_KEYS

    store = artifact_store("s3://nca-test-gone", endpoint_url=s3_server, access_key=S3_KEYS[0],
                           secret_key="wrong-secret-key")
    with pytest.raises(ArtifactUnavailable):
        store.ping()
    with pytest.raises(ArtifactUnavailable):
        store.put("job1/target", b"x")


def test_a_location_without_a_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match="names no bucket"):
        artifact_store("s3://")


def test_services_that_create_the_bucket_at_once_all_start(s3_server: str) -> None:
    """Compose starts the API, the stream and the workers together, each with NCA_S3_CREATE_BUCKET: one that
    found no bucket and creates it after another did must start all the same (it crashed: BucketAlreadyExists)."""
    from tests.conftest import S3_KEYS

    def service(create: bool):
        return artifact_store("s3://nca-race/artifacts", endpoint_url=s3_server, access_key=S3_KEYS[0],
                              secret_key=S3_KEYS[1], create_bucket=create)

    first = service(create=True)
    late = service(create=False)
    late._create()  # the losing side of the race: its HeadBucket said "none", then the other one made it
    service(create=True).put("job/x", b"both")  # and a service starting now just finds it
    assert late.get("job/x") == first.get("job/x") == b"both"
