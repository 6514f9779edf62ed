"""The stream checks the owner (cookie or X-Owner-Token) or a share link before it plays a job's model;
and the default quotas let a classroom of 30 owners behind one address each open a stream.

A real stream service (uvicorn subprocess), the real Redis, real websockets clients; the job gets its
checkpoint the way a worker stores it.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import torch

from backend.config import Settings
from backend.nca import JobSpec, modelfile
from backend.storage.jobs import JobStore
from backend.storage.owners import COOKIE, Owners
from backend.storage.sharing import Access
from backend.stream.protocol import CLOSE_TRY_AGAIN_LATER, CLOSE_UNKNOWN_MODEL
from tests.hardening.conftest import Service
from tests.stream.client import watch
from tests.stream.conftest import random_model

SECRET = "stream-test-key"


@pytest.fixture(scope="module")
def service(stream_service) -> Service:
    return stream_service(secret_key=SECRET, stream_max_sessions=64, stream_torch_threads=1)


@pytest.fixture(scope="module")
def store(redis_server) -> tuple[JobStore, Owners, Access]:
    client = redis.Redis.from_url(redis_server.url)
    owners = Owners(client, SECRET)
    return JobStore(client), owners, Access(client, owners)


def a_job(store: JobStore, owners: Owners, owner: str) -> str:
    job_id = uuid.uuid4().hex
    owners.claim(job_id, owner)
    store.create(job_id, JobSpec.from_options({"name": "private", "iterations": 100}), torch.zeros(4, 16, 16))
    assert store.claim(job_id, "w", 60, "cpu", "test") == "ok"
    assert store.store_checkpoint(job_id, "w", modelfile.to_bytes(random_model(1, 16, 16, 10)), 10, 0.5) > 0
    return job_id


async def plays(url: str, **headers: str) -> bool:
    async with watch(url, additional_headers=headers) as viewer:
        first = await viewer.next(10.0)
        if isinstance(first, dict) and first["type"] == "error":
            close = await viewer.closed()
            assert close.code == CLOSE_UNKNOWN_MODEL and "unknown model" in close.reason
            return False
        return True


def test_the_stream_plays_a_job_to_its_owner_and_share_holders_only(service: Service, store) -> None:
    jobs, owners, access = store
    alice, bob = owners.mint("10.5.0.1"), owners.mint("10.5.0.2")
    job_id = a_job(jobs, owners, alice)
    url = service.url(job_id)

    async def check() -> None:
        assert await plays(url, Cookie=f"{COOKIE}={owners.token(alice)}")
        assert await plays(url, **{"X-Owner-Token": owners.token(alice)})
        assert not await plays(url, Cookie=f"{COOKIE}={owners.token(bob)}")
        assert not await plays(url)  # nobody
        assert not await plays(url, Cookie=f"{COOKIE}={owners.token(alice)}x")  # tampered
        assert not await plays(service.url(f"{job_id}@10"), Cookie=f"{COOKIE}={owners.token(bob)}")
        token = access.share(job_id)
        assert await plays(url + f"&share={token}")
        assert await plays(url, Cookie=f"{COOKIE}={owners.token(bob)}; nca_shares=other,{token}")
        access.revoke(job_id, token)
        assert not await plays(url + f"&share={token}")
        access.publish(job_id)
        assert await plays(url, Cookie=f"{COOKIE}={owners.token(bob)}")
        access.unpublish(job_id)
        assert not await plays(url, Cookie=f"{COOKIE}={owners.token(bob)}")

    asyncio.run(check())


def test_thirty_owners_behind_one_address_each_open_a_stream(service: Service, store) -> None:
    """The defaults (streams per address, per owner, per replica) let a classroom behind one NAT watch."""
    jobs, owners, _ = store
    defaults = Settings()
    assert defaults.stream_max_sessions_per_client >= 30 and defaults.max_active_jobs_per_client >= 30
    pupils = [owners.mint("10.6.0.1") for _ in range(30)]
    models = [a_job(jobs, owners, pupil) for pupil in pupils]

    async def classroom() -> None:
        async with asyncio.timeout(120):
            viewers = [watch(service.url(model), additional_headers={"Cookie": f"{COOKIE}={owners.token(pupil)}"})
                       for pupil, model in zip(pupils, models, strict=True)]
            opened = [await v.__aenter__() for v in viewers]
            try:
                for viewer in opened:
                    event = await viewer.event("model", timeout=30)
                    assert event["type"] == "model"
                assert service.health()["sessions"] == 30
            finally:
                for v in viewers:
                    await v.__aexit__(None, None, None)

    asyncio.run(classroom())


def test_streams_per_owner_are_capped(stream_service, store) -> None:
    jobs, owners, _ = store
    capped = stream_service(secret_key=SECRET, stream_max_sessions_per_owner=2, stream_torch_threads=1)
    alice = owners.mint("10.7.0.1")
    job_id = a_job(jobs, owners, alice)
    cookie = {"Cookie": f"{COOKIE}={owners.token(alice)}"}

    async def check() -> None:
        async with watch(capped.url(job_id), additional_headers=cookie) as one, \
                watch(capped.url(job_id), additional_headers=cookie) as two:
            await one.event("model")
            await two.event("model")
            async with watch(capped.url(job_id), additional_headers=cookie) as three:
                error = await three.event("error")
                close = await three.closed()
            assert close.code == CLOSE_TRY_AGAIN_LATER and "stream quota" in error["message"]
            async with watch(capped.url(), additional_headers={"Cookie": f"{COOKIE}={owners.token(owners.mint('x'))}"}
                             ) as other:
                await other.event("model")  # another owner from the same address still gets in

    asyncio.run(check())
