"""The artifact store: a job's files (target, checkpoints, history weights, models, cached renders)
kept outside Redis, so that Redis holds only small records, indexes, leases and counters (issue 21).

One small interface, two backends:
- `DirArtifacts`: a local directory (the embedded default for `python -m backend.run`, `.data/artifacts`);
- `S3Artifacts`: any S3-compatible service (AWS S3, R2, MinIO, GCS in interoperability mode) through boto3.

Objects are named `<job id>/<name>` (cached renders too: `<job id>/renders/...`), so that `delete_job` removes
every object of a job with one prefix and the orphan sweep can list jobs by prefix. Every write returns the
object's SHA-256; the caller stores it in the job record *after* the write (an artifact is written before
anything points at it) and passes it back on read, where it is verified: a missing object raises
`ArtifactMissing`, a changed one `ArtifactCorrupt` (the API maps both to a clear 4xx/503, never a 500).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from backend.config import Settings

__all__ = ["EXAMPLE_RENDERS", "RENDERS_FOLDER", "ArtifactCorrupt", "ArtifactError", "ArtifactMissing", "ArtifactStore",
           "ArtifactUnavailable", "DirArtifacts", "S3Artifacts", "artifact_store", "artifacts_from_settings",
           "render_digest", "sha256"]


class ArtifactError(Exception):
    """A problem with a stored artifact; `key` names it."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class ArtifactMissing(ArtifactError):
    """The record points at an object that is not there (deleted, or lost with its volume)."""


class ArtifactCorrupt(ArtifactError):
    """The object is there but its bytes do not match the SHA-256 the record keeps."""


class ArtifactUnavailable(ArtifactError):
    """The store could not be reached (network, credentials, disk): try again later (503)."""


RENDERS_FOLDER = "renders"  # a job's cached renders: <job id>/renders/<model file sha256>/<kind>-<params hash>
EXAMPLE_RENDERS = "_examples"  # the shipped examples' renders (no job owns them): _examples/renders/...


def render_digest(key: str) -> str | None:
    """The model file's SHA-256 a render's key names (`<job id>/renders/<sha256>/...`); None for other keys."""
    parts = key.split("/")
    return parts[2] if len(parts) == 4 and parts[1] == RENDERS_FOLDER else None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_key(key: str) -> None:
    """Keys are `<job id>/<name>`: no absolute paths, no `..`, nothing a directory backend could escape with."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ValueError(f"bad artifact key {key!r}: expected '<job id>/<name>'")


class ArtifactStore(Protocol):
    """What the job store, the worker and the API need of an artifact backend."""

    description: str  # where the objects live, for logs and /api/health

    def put(self, key: str, data: bytes) -> str:
        """Write (or replace) an object; its SHA-256."""
        ...

    def get(self, key: str, digest: str | None = None) -> bytes:
        """The object's bytes, checked against `digest` when given (ArtifactMissing / ArtifactCorrupt)."""
        ...

    def delete(self, key: str) -> None:
        """Remove one object (no error when it is already gone)."""
        ...

    def delete_job(self, job_id: str) -> int:
        """Remove every object of a job (DELETE of a job, the orphan sweep); how many were removed."""
        ...

    def objects(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """(key, last modified as unix seconds) of every object whose key starts with `prefix` (the sweep)."""
        ...

    def ping(self) -> None:
        """Raise ArtifactUnavailable when the store cannot be reached (/api/health)."""
        ...


def _verify(key: str, data: bytes, digest: str | None) -> bytes:
    if digest is not None and sha256(data) != digest:
        raise ArtifactCorrupt(key, "its content does not match the checksum in the job record")
    return data


class DirArtifacts:
    """Objects as files under one directory; writes are atomic (a temporary file, then rename)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.description = f"directory {self.root}"

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise ArtifactUnavailable(key, f"could not write ({exc.strerror or exc})") from exc
        return sha256(data)

    def get(self, key: str, digest: str | None = None) -> bytes:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactMissing(key, "the object is missing from the artifact store") from exc
        except OSError as exc:
            raise ArtifactUnavailable(key, f"could not read ({exc.strerror or exc})") from exc
        return _verify(key, data, digest)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_job(self, job_id: str) -> int:
        _check_key(job_id)
        folder = self.root / job_id
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def objects(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        for path in self.root.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and not path.name.startswith(".tmp-") and key.startswith(prefix):
                try:
                    yield key, path.stat().st_mtime
                except FileNotFoundError:  # deleted meanwhile
                    continue

    def ping(self) -> None:
        if not (self.root.is_dir() and os.access(self.root, os.W_OK)):
            raise ArtifactUnavailable("", f"the artifact directory {self.root} is missing or not writable")


class S3Artifacts:
    """Objects in one bucket (under an optional prefix) of an S3-compatible service, through boto3."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, region: str | None = None,
                 create_bucket: bool = False):
        import boto3  # imported here: the directory backend (the default) does not need it
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.description = f"s3://{bucket}/{self.prefix} at {endpoint_url or 'AWS'}"
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30,
                        s3={"addressing_style": "path"})
        self._s3: Any = boto3.client("s3", endpoint_url=endpoint_url or None, aws_access_key_id=access_key or None,
                                     aws_secret_access_key=secret_key or None, region_name=region or "us-east-1",
                                     config=config)
        from botocore.exceptions import BotoCoreError, ClientError

        self._client_error, self._boto_error = ClientError, BotoCoreError
        if create_bucket:
            self.create_bucket()

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist (compose and the tests; in production it exists)."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except self._client_error:
            self._create()

    def _create(self) -> None:
        """CreateBucket, where another service may have just done it: compose starts the API, the stream and
        the workers at once, each checks, and all but the first find it made (rclone answers
        BucketAlreadyExists, AWS BucketAlreadyOwnedByYou); a crash at start there would fail `up`."""
        try:
            self._s3.create_bucket(Bucket=self.bucket)
        except self._client_error as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                raise

    def _name(self, key: str) -> str:
        _check_key(key)
        return self.prefix + key

    def _unavailable(self, key: str, exc: Exception) -> ArtifactUnavailable:
        return ArtifactUnavailable(key, f"the object store at {self.description} failed: {exc}")

    def put(self, key: str, data: bytes) -> str:
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)
        except (self._client_error, self._boto_error) as exc:
            raise self._unavailable(key, exc) from exc
        return sha256(data)

    def get(self, key: str, digest: str | None = None) -> bytes:
        try:
            data = self._s3.get_object(Bucket=self.bucket, Key=self._name(key))["Body"].read()
        except self._client_error as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise ArtifactMissing(key, "the object is missing from the artifact store") from exc
            raise self._unavailable(key, exc) from exc
        except self._boto_error as exc:
            raise self._unavailable(key, exc) from exc
        return _verify(key, data, digest)

    def delete(self, key: str) -> None:
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=self._name(key))
        except (self._client_error, self._boto_error) as exc:
            raise self._unavailable(key, exc) from exc

    def _keys(self, prefix: str) -> Iterator[tuple[str, float]]:
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"], item["LastModified"].timestamp()
        except (self._client_error, self._boto_error) as exc:
            raise self._unavailable(prefix, exc) from exc

    def delete_job(self, job_id: str) -> int:
        _check_key(job_id)
        names = [name for name, _ in self._keys(f"{self.prefix}{job_id}/")]
        for start in range(0, len(names), 1000):  # DeleteObjects takes at most 1000 keys
            chunk = [{"Key": name} for name in names[start:start + 1000]]
            self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
        return len(names)

    def objects(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        for name, modified in self._keys(self.prefix + prefix):
            yield name[len(self.prefix):], modified

    def ping(self) -> None:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except (self._client_error, self._boto_error) as exc:
            raise self._unavailable("", exc) from exc


def artifact_store(location: str, *, endpoint_url: str | None = None, access_key: str | None = None,
                   secret_key: str | None = None, region: str | None = None,
                   create_bucket: bool = False) -> ArtifactStore:
    """The backend `location` names (NCA_ARTIFACTS): `s3://bucket[/prefix]`, or a directory path."""
    if location.startswith("s3://"):
        parsed = urlparse(location)
        if not parsed.netloc:
            raise ValueError(f"NCA_ARTIFACTS={location!r} names no bucket: use s3://<bucket>[/<prefix>]")
        return S3Artifacts(parsed.netloc, parsed.path, endpoint_url=endpoint_url, access_key=access_key,
                           secret_key=secret_key, region=region, create_bucket=create_bucket)
    return DirArtifacts(location)


def artifacts_from_settings(settings: Settings) -> ArtifactStore:
    """The store the settings name (NCA_ARTIFACTS and NCA_S3_*): every service builds it so."""
    location = settings.artifacts or str(settings.data_dir / "artifacts")
    return artifact_store(location, endpoint_url=settings.s3_endpoint_url, access_key=settings.s3_access_key_id,
                          secret_key=settings.s3_secret_access_key, region=settings.s3_region,
                          create_bucket=settings.s3_create_bucket)
