"""Owners, privacy, share links, the gallery, deletion and quotas, against the real app and a real Redis.

Two owners are two TestClients with their own cookie jars (two browsers); a job gets its checkpoints
the way a worker writes them (the real JobStore transitions), so no training is needed here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner

from backend.config import Settings
from backend.nca import modelfile
from backend.storage import keys
from backend.storage.artifacts import artifacts_from_settings
from backend.storage.jobs import JobStore
from backend.storage.owners import COOKIE, TOKEN_SALT
from backend.storage.quota import COUNTS_KEY, JOBS_KEY
from tests.conftest import TINY_TRAINING, png_image
from tests.owners.conftest import ADMIN, upload
from tests.stream.conftest import random_model


def trained(redis_url: str, job_id: str, checkpoints: int = 2, status: str = "succeeded") -> None:
    """Play the worker: claim the job, store `checkpoints` checkpoints (history too), finish it."""
    store = JobStore(redis.Redis.from_url(redis_url))
    assert store.claim(job_id, "w", 60, "cpu", "test") == "ok"
    job = store.get(job_id)
    for i in range(1, checkpoints + 1):
        data = modelfile.to_bytes(random_model(i, job.grid_height, job.grid_width, iterations=10 * i))
        assert store.store_checkpoint(job_id, "w", data, 10 * i, 0.5) > 0
    if status != "running":
        assert store.finish(job_id, "w", status)


def job_urls(job_id: str) -> list[tuple[str, str]]:
    """Every endpoint of a job and of its model."""
    base, model = f"/api/jobs/{job_id}", f"/api/models/{job_id}"
    return [("GET", base), ("GET", f"{base}/target.png"), ("GET", f"{base}/preview.png"),
            ("GET", f"{base}/checkpoints"), ("GET", f"{base}/checkpoints/10/preview.png"),
            ("GET", model), ("GET", f"{model}/file"), ("GET", f"/api/models/{job_id}@10"),
            ("GET", f"/api/models/{job_id}@10/file"), ("GET", f"{model}/distill.json"),
            ("GET", f"{model}/player.html"), ("GET", f"{model}/video.gif?steps=4&scale=1"), ("GET", f"{model}/card"),
            ("POST", f"{base}/cancel"), ("DELETE", base), ("POST", f"{base}/shares"), ("GET", f"{base}/shares"),
            ("POST", f"{base}/publish"), ("DELETE", f"{base}/publish")]


# --- identity ------------------------------------------------------------------------------------


def test_a_create_without_identity_mints_an_owner_as_cookie_and_in_the_body(browser: Callable[..., TestClient]
                                                                            ) -> None:
    a = browser()
    created = upload(a)
    assert created.status_code == 202, created.text
    token = created.json()["owner_token"]
    cookie = created.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={token};") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert created.json()["access"]["mine"] is True
    again = upload(a)  # the cookie is the identity now: no new owner
    assert again.json()["owner_token"] is None and "set-cookie" not in again.headers
    assert a.get("/api/me").json()["token"] == token
    # A script with the token, no cookie: the same owner (header, or bearer where there is no access token).
    script = browser()
    assert script.get("/api/jobs", headers={"X-Owner-Token": token}).json()["total"] == 2
    assert script.get("/api/jobs", headers={"Authorization": f"Bearer {token}"}).json()["total"] == 2
    assert script.get("/api/jobs").json()["total"] == 0


@pytest.mark.parametrize("bad", ["tampered", "foreign", "garbage", "long"])
def test_a_bad_token_is_a_fresh_owner_never_someone_elses(browser: Callable[..., TestClient], bad: str) -> None:
    a = browser()
    token = upload(a).json()["owner_token"]
    owner = token.split(".")[0]
    forged = {"tampered": owner[:-1] + ("0" if owner[-1] != "0" else "1") + token[32:],
              "foreign": TimestampSigner("another server's key", salt=TOKEN_SALT).sign(owner).decode(),
              "garbage": "%%%;,\"", "long": "x" * 5000}[bad]
    for headers in ({"X-Owner-Token": forged}, {"Cookie": f"{COOKIE}={forged}"}):
        other = browser()
        other.cookies.clear()
        me = other.get("/api/me", headers=headers)
        assert me.status_code == 200, me.text
        assert me.json()["owner"] not in (owner, None)
        assert other.get("/api/jobs", headers=headers).json()["total"] == 0


def test_an_expired_token_is_a_fresh_owner(app_factory: Callable[..., object]) -> None:
    with TestClient(app_factory(owner_token_days=1 / 86400)) as client:  # valid one second
        owner = client.get("/api/me").json()["owner"]
        time.sleep(2.2)
        assert client.get("/api/me").json()["owner"] != owner


def test_replicas_without_a_configured_key_share_the_one_kept_in_redis(app_factory: Callable[..., object]) -> None:
    with TestClient(app_factory()) as one, TestClient(app_factory()) as two:
        token = one.get("/api/me").json()["token"]
        assert two.get("/api/me", headers={"X-Owner-Token": token}).json()["token"] == token
    with TestClient(app_factory(secret_key="configured")) as three:  # NCA_SECRET_KEY set: the Redis one is not used
        assert three.get("/api/me", headers={"X-Owner-Token": token}).json()["owner"] != token.split(".")[0]


def test_owner_creation_is_rate_limited_per_address(app_factory: Callable[..., object]) -> None:
    app = app_factory(owners_per_address_per_hour=2)
    owners = []
    for _ in range(2):
        with TestClient(app, client=("10.9.9.9", 1)) as client:
            owners.append(client.get("/api/me").json()["owner"])
    with TestClient(app, client=("10.9.9.9", 1)) as client:  # cookies cleared a third time
        refused = upload(client)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        assert "too many new owners from your address" in refused.json()["detail"]
    with TestClient(app, client=("10.9.9.8", 1)) as elsewhere:
        assert elsewhere.get("/api/me").status_code == 200
    assert len(set(owners)) == 2


def test_cookie_changes_from_another_site_are_refused(browser: Callable[..., TestClient]) -> None:
    a = browser()
    created = upload(a)
    job_id, token = created.json()["id"], created.json()["owner_token"]
    evil = {"Origin": "http://evil.example"}
    assert a.post(f"/api/jobs/{job_id}/cancel", headers=evil).status_code == 403
    assert a.post(f"/api/jobs/{job_id}/cancel", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert a.delete(f"/api/jobs/{job_id}", headers=evil).status_code == 403
    assert upload(a, **evil).status_code == 403
    assert a.post("/api/me", json={"token": token}, headers=evil).status_code == 403  # no login CSRF either
    assert a.get(f"/api/jobs/{job_id}").json()["status"] == "queued"
    # The page's own origin, and scripts with the header token (a page cannot send one cross-site), pass.
    assert a.post(f"/api/jobs/{job_id}/cancel", headers={"Origin": "http://testserver"}).status_code == 200
    script = browser()
    assert script.delete(f"/api/jobs/{job_id}", headers={**evil, "X-Owner-Token": token}).status_code == 204


def test_a_token_pasted_in_another_browser_carries_the_jobs(browser: Callable[..., TestClient]) -> None:
    a, b = browser(), browser()
    created = upload(a).json()
    assert b.post("/api/me", json={"token": "not-a-token"}).status_code == 422
    adopted = b.post("/api/me", json={"token": created["owner_token"]})
    assert adopted.status_code == 200 and adopted.json()["owner"] == created["owner_token"].split(".")[0]
    assert [j["id"] for j in b.get("/api/jobs").json()["items"]] == [created["id"]]


# --- privacy -------------------------------------------------------------------------------------


def test_owner_b_gets_404_for_everything_of_owner_a(browser: Callable[..., TestClient], redis_url: str) -> None:
    a, b = browser(), browser("10.1.0.2")
    job_id = upload(a).json()["id"]
    trained(redis_url, job_id)
    b.get("/api/me")  # B is an owner too
    assert a.get(f"/api/models/{job_id}/file").status_code == 200
    assert job_id in [m["id"] for m in a.get("/api/models").json()["items"]]
    assert b.get("/api/jobs").json() == {"items": [], "total": 0, "offset": 0, "limit": 20, "next_cursor": None}
    assert job_id not in [m["id"] for m in b.get("/api/models").json()["items"]]
    for method, url in job_urls(job_id):
        answer = b.request(method, url)
        assert answer.status_code == 404, (method, url, answer.text)
    assert a.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded"  # B's cancel and delete did nothing
    # A guessed id answers exactly as someone else's.
    guessed = "0" * 32
    assert b.get(f"/api/jobs/{guessed}").json() == {"detail": f"no job with id {guessed}"}
    assert b.get(f"/api/jobs/{job_id}").json() == {"detail": f"no job with id {job_id}"}


def test_the_operator_sees_and_manages_every_job(browser: Callable[..., TestClient]) -> None:
    a, op = browser(), browser()
    job_id = upload(a).json()["id"]
    admin = {"X-Owner-Token": ADMIN}
    assert job_id in [j["id"] for j in op.get("/api/jobs", headers=admin, params={"limit": 100}).json()["items"]]
    assert op.get(f"/api/jobs/{job_id}", headers=admin).json()["access"]["mine"] is True
    assert op.post(f"/api/jobs/{job_id}/cancel", headers=admin).status_code == 200
    assert op.delete(f"/api/jobs/{job_id}", headers=admin).status_code == 204
    assert a.get(f"/api/jobs/{job_id}").status_code == 404


# --- share links and the gallery -----------------------------------------------------------------


def test_a_share_link_opens_read_only_and_revoking_it_closes_it(browser: Callable[..., TestClient],
                                                               redis_url: str) -> None:
    a, b, player = browser(), browser("10.1.0.2"), browser("10.1.0.3")
    job_id = upload(a).json()["id"]
    trained(redis_url, job_id)
    share = a.post(f"/api/jobs/{job_id}/shares")
    assert share.status_code == 201
    token, url = share.json()["token"], share.json()["url"]
    assert len(token) >= 22 and url == f"/s/{token}"
    assert a.get(f"/api/jobs/{job_id}").json()["access"]["shares"] == [token]

    opened = b.get(url, follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == f"/#watch/{job_id}"
    assert b.get(f"/api/jobs/{job_id}").status_code == 200
    view = b.get(f"/api/jobs/{job_id}").json()["access"]
    assert view["mine"] is False and view["shares"] == []  # B cannot see (and pass on) the owner's other links
    assert b.get(f"/api/models/{job_id}/file").status_code == 200
    assert b.get(f"/api/jobs/{job_id}/checkpoints").status_code == 200
    assert {"id": job_id, "access": "shared"}.items() <= next(
        m for m in b.get("/api/models").json()["items"] if m["id"] == job_id).items()
    assert b.get("/api/jobs").json()["total"] == 0  # not B's job
    for method, url_ in [("POST", f"/api/jobs/{job_id}/cancel"), ("DELETE", f"/api/jobs/{job_id}"),
                         ("POST", f"/api/jobs/{job_id}/shares"), ("POST", f"/api/jobs/{job_id}/publish")]:
        assert b.request(method, url_).status_code == 403, url_
    # Links made from it (the one-file player, a video) carry ?share= and work in a fresh browser.
    assert player.get(f"/api/models/{job_id}/file", params={"share": token}).status_code == 200
    assert player.get(f"/api/models/{job_id}/file").status_code == 404

    assert b.get("/s/wrong-token-0000000000", follow_redirects=False).status_code == 404
    assert b.delete(f"/api/jobs/{job_id}/shares/{token}").status_code == 403
    assert a.delete(f"/api/jobs/{job_id}/shares/{token}").status_code == 204
    assert a.delete(f"/api/jobs/{job_id}/shares/{token}").status_code == 404
    assert b.get(url, follow_redirects=False).status_code == 404
    assert b.get(f"/api/jobs/{job_id}").status_code == 404
    assert player.get(f"/api/models/{job_id}/file", params={"share": token}).status_code == 404
    assert job_id not in [m["id"] for m in b.get("/api/models").json()["items"]]


def test_publish_puts_a_finished_model_in_every_listing(browser: Callable[..., TestClient], redis_url: str) -> None:
    a, visitor = browser(), browser("10.1.0.4")
    job_id = upload(a).json()["id"]
    assert a.post(f"/api/jobs/{job_id}/publish").status_code == 409  # still queued, no model
    trained(redis_url, job_id)
    assert a.post(f"/api/jobs/{job_id}/publish").status_code == 204
    assert a.get(f"/api/jobs/{job_id}").json()["access"]["published"] is True
    listed = {m["id"]: m["access"] for m in visitor.get("/api/models").json()["items"]}
    assert listed[job_id] == "public"
    assert visitor.get(f"/api/jobs/{job_id}").status_code == 200
    assert visitor.delete(f"/api/jobs/{job_id}").status_code == 403
    assert a.delete(f"/api/jobs/{job_id}/publish").status_code == 204
    assert job_id not in [m["id"] for m in visitor.get("/api/models").json()["items"]]
    assert visitor.get(f"/api/jobs/{job_id}").status_code == 404


def test_names_stay_escaped_in_listings(browser: Callable[..., TestClient]) -> None:
    a = browser()
    fields = {k: str(v) for k, v in {**TINY_TRAINING, "iterations": 10}.items()}
    created = a.post("/api/jobs", files={"image": ("x.png", png_image(), "image/png")},
                     data={**fields, "name": "</script><script>alert(1)</script>"})
    assert created.status_code == 202, created.text
    for answer in (created, a.get("/api/jobs"), a.get(f"/api/jobs/{created.json()['id']}")):
        assert answer.headers["content-type"] == "application/json"  # never HTML: the page sets textContent
    assert a.get("/api/jobs").json()["items"][0]["name"] == "</script><script>alert(1)</script>"


# --- deletion ------------------------------------------------------------------------------------


def _everything(client: redis.Redis) -> dict[str, object]:
    """Every key of the database with a summary of its content (members of sets, fields of hashes)."""
    found: dict[str, object] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "zset":
            found[key.decode()] = sorted(m.decode() for m in client.zrange(key, 0, -1))
        elif kind == "set":
            found[key.decode()] = sorted(m.decode() for m in client.smembers(key))
        elif kind == "hash":
            found[key.decode()] = sorted(f.decode() for f in client.hkeys(key))
        else:
            found[key.decode()] = kind
    return found


def test_delete_removes_every_key_and_file_of_the_job_and_nothing_else(browser: Callable[..., TestClient],
                                                                       redis_url: str, models_dir: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    a = browser()
    doomed, kept = upload(a).json()["id"], upload(a).json()["id"]
    for job_id in (doomed, kept):
        trained(redis_url, job_id, checkpoints=3)
        a.post(f"/api/jobs/{job_id}/shares")
        a.post(f"/api/jobs/{job_id}/publish")
        (models_dir / "jobs").mkdir(exist_ok=True)
        (models_dir / "jobs" / f"{job_id}.safetensors").write_bytes(b"exported by the worker")
    assert a.get(f"/api/models/{doomed}/file").status_code == 200  # reads that fill the caches
    before = _everything(client)
    doomed_keys = {k for k in before if doomed in k}
    doomed_shares = {keys.SHARE.prefix + t for t in before[keys.job_key(doomed, "shares")]}
    assert {keys.job_key(doomed, p) for p in ("history", "owner", "shares")} <= doomed_keys
    files = artifacts_from_settings(Settings())  # its target, model and history weights live in the artifact store
    kept_files = {key for key, _ in files.objects(f"{kept}/")}
    assert {key for key, _ in files.objects(f"{doomed}/")} >= {f"{doomed}/target"} and len(kept_files) >= 5
    assert a.delete(f"/api/jobs/{doomed}").status_code == 204
    assert list(files.objects(f"{doomed}/")) == [] and {key for key, _ in files.objects(f"{kept}/")} == kept_files
    after = _everything(client)
    gone = set(before) - set(after)
    assert gone == doomed_keys | doomed_shares
    for key, content in after.items():  # no index still names it; everything else is as it was
        assert doomed not in str(content), key
        expected = before[key]
        if isinstance(expected, list):
            expected = [m for m in expected if m != doomed]
        if key not in (keys.QUOTA_COUNTS.pattern, keys.QUOTA_JOBS.pattern):
            assert content == expected, key
    assert not (models_dir / "jobs" / f"{doomed}.safetensors").exists()
    assert (models_dir / "jobs" / f"{kept}.safetensors").exists()
    assert a.get(f"/api/jobs/{kept}").status_code == 200 and a.get(f"/api/models/{kept}/file").status_code == 200
    # Idempotent: it is gone, and stays gone.
    assert a.delete(f"/api/jobs/{doomed}").status_code == 404
    assert _everything(client) == after
    assert a.get(f"/api/models/{doomed}/file").status_code == 404


def test_delete_of_a_queued_job_frees_its_slot(browser: Callable[..., TestClient], redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    a = browser()
    job_id = upload(a).json()["id"]
    tags = client.hget(keys.job_key(job_id), "quota_tags").decode()  # whom it counts for: its end knows which
    owner = next(tag for tag in tags.split("|") if tag.startswith("o:"))
    assert client.zscore(JOBS_KEY, job_id) is not None and int(client.hget(COUNTS_KEY, owner)) == 1
    total = int(client.hget(COUNTS_KEY, "total"))
    assert a.delete(f"/api/jobs/{job_id}").status_code == 204
    assert client.zscore(JOBS_KEY, job_id) is None and client.hget(COUNTS_KEY, owner) is None
    assert int(client.hget(COUNTS_KEY, "total") or 0) == total - 1


# --- quotas --------------------------------------------------------------------------------------


def test_an_upload_then_cancel_loop_stops_at_the_owner_byte_quota(app_factory: Callable[..., object]) -> None:
    app = app_factory(max_owner_megabytes=0.02)  # 20 kB: a few tiny jobs
    with TestClient(app, client=("10.3.0.1", 1)) as a, TestClient(app, client=("10.3.0.1", 2)) as b:
        made = []
        for _ in range(50):
            created = upload(a)
            if created.status_code != 202:
                break
            made.append(created.json()["id"])
            assert a.post(f"/api/jobs/{made[-1]}/cancel").status_code == 200  # cancelling frees no storage
        assert created.status_code == 429, created.text
        assert 2 <= len(made) < 50
        detail = created.json()["detail"]
        assert "storage quota" in detail and "delete jobs you no longer need" in detail
        assert int(created.headers["retry-after"]) > 0
        assert upload(b).status_code == 202  # another owner behind the same address is not affected
        assert a.delete(f"/api/jobs/{made[0]}").status_code == 204  # deleting frees it
        assert upload(a).status_code == 202


def test_active_jobs_are_counted_per_owner(app_factory: Callable[..., object]) -> None:
    app = app_factory(max_active_jobs_per_owner=2)
    with TestClient(app, client=("10.4.0.1", 1)) as a, TestClient(app, client=("10.4.0.1", 2)) as b:
        assert upload(a).status_code == upload(a).status_code == 202
        refused = upload(a)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "30"
        assert "active-jobs quota: you already have 2 queued or running jobs (at most 2)" in refused.json()["detail"]
        assert upload(b).status_code == 202  # the same address, another owner


def test_thirty_owners_behind_one_address_each_start_a_job(redis_url: str, models_dir: Path) -> None:
    """The default quotas let a classroom behind one NAT train (the streams: tests/hardening/test_owner_streams.py)."""
    from backend.api.main import create_app
    from backend.config import Settings

    redis.Redis.from_url(redis_url).flushdb()
    app = create_app(Settings(redis_url=redis_url, models_dir=models_dir))  # the defaults
    for seat in range(30):
        with TestClient(app, client=("192.0.2.1", 1000 + seat)) as pupil:
            created = upload(pupil)
            assert created.status_code == 202, (seat, created.text)


# --- retention -----------------------------------------------------------------------------------


def test_the_retention_sweep_deletes_expired_private_jobs_only(app_factory: Callable[..., object],
                                                               redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    app = app_factory(retention_days=1)
    with TestClient(app, client=("10.2.0.1", 1)) as a:
        private, published, shared, running, recent = (upload(a).json()["id"] for _ in range(5))
        for job_id in (private, published, shared, recent):
            trained(redis_url, job_id)
        trained(redis_url, running, status="running")
        assert a.post(f"/api/jobs/{published}/publish").status_code == 204
        assert a.post(f"/api/jobs/{shared}/shares").status_code == 201
        card = a.get(f"/api/jobs/{private}").json()["access"]
        finished_at = a.get(f"/api/jobs/{private}").json()["finished_at"]
        assert card["expires_at"] == pytest.approx(finished_at + 86400)  # what the job card shows
        assert a.get(f"/api/jobs/{published}").json()["access"]["expires_at"] is None
        assert a.get(f"/api/jobs/{running}").json()["access"]["expires_at"] is None
        client.hset(keys.job_key(recent), "finished_at", time.time() + 2 * 86400)  # ended later than the others

        deletion = app.state.storage.deletion
        client.delete(keys.RETENTION_LOCK.pattern)
        assert deletion.sweep_if_due(now=time.time() + 1.5 * 86400) == [private]
        assert deletion.sweep_if_due(now=time.time() + 9 * 86400) is None  # another sweep ran within the period
        assert client.ttl(keys.RETENTION_LOCK.pattern) > 0
        assert a.get(f"/api/jobs/{private}").status_code == 404
        assert not [k for k in client.scan_iter() if private.encode() in k]
        for kept in (published, shared, running, recent):
            assert a.get(f"/api/jobs/{kept}").status_code == 200, kept


def test_retention_is_off_by_default(app_factory: Callable[..., object]) -> None:
    app = app_factory()
    assert app.state.storage.deletion.sweep_if_due(now=time.time() + 10**9) is None


def test_training_minutes_per_day_are_capped_per_owner(app_factory: Callable[..., object], redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    app = app_factory(max_owner_training_minutes_per_day=30)
    with TestClient(app, client=("10.5.5.1", 1)) as a, TestClient(app, client=("10.5.5.1", 2)) as b:
        first = upload(a).json()["id"]
        client.hset(keys.job_key(first), "trained_seconds", 29 * 60)  # as the worker writes it while training
        assert upload(a).status_code == 202  # 29 minutes: still under
        client.hset(keys.job_key(first), "trained_seconds", 31 * 60)
        refused = upload(a)
        assert refused.status_code == 429
        assert "training-time quota: your jobs of the last 24 hours trained 31 minutes (at most 30 a day)" in \
            refused.json()["detail"]
        assert 86000 < int(refused.headers["retry-after"]) <= 86401  # when the first job is a day old
        assert upload(b).status_code == 202  # someone else's day
        client.zadd(keys.OWNER_JOBS.prefix + a.get("/api/me").json()["owner"] + ":jobs", {first: time.time() - 86401})
        assert upload(a).status_code == 202  # a day later, the job no longer counts
