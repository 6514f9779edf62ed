"""Cursor pages of GET /api/jobs and GET /api/models against the real app and a real Redis: every job once
while jobs come and go between pages, nobody else's, bad cursors and limits answered with a 422, and a
search that finds what the first page does not show.

Jobs are written with the store's own functions (JobStore.create, Owners.claim, the worker's checkpoint
write), as the API and a worker write them; no training is needed to list them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
import torch
from fastapi.testclient import TestClient

from backend.nca.jobspec import JobSpec
from backend.storage import listing
from backend.storage.jobs import JobStore, new_job_id
from backend.storage.listing import Cursor, IndexSource, ListSource, scan
from backend.storage.owners import Owners
from tests.owners.conftest import ADMIN
from tests.owners.test_owners import trained


def make_jobs(redis_url: str, owner: str, names: list[str], checkpoint: bool = False) -> list[str]:
    """Jobs of `owner`, the first name oldest; with a checkpoint each when asked (the worker's write)."""
    client = redis.Redis.from_url(redis_url)
    store, owners = JobStore(client), Owners(client)
    made = []
    for name in names:
        job_id = new_job_id()
        owners.claim(job_id, owner)
        store.create(job_id, JobSpec.from_options({"name": name, "iterations": 100}), torch.rand(4, 8, 8))
        if checkpoint:
            trained(redis_url, job_id, checkpoints=1)
        made.append(job_id)
        time.sleep(0.002)  # distinct creation times, as uploads have (ties are tested on their own below)
    return made


def walk(client: TestClient, path: str, between: Callable[[int], None] = lambda page: None,
         **params: object) -> tuple[list[str], list[dict]]:
    """Every id of a listing, page by page, following next_cursor; `between(n)` runs after page n."""
    ids, pages, cursor = [], [], None
    for number in range(200):
        answer = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        pages.append(page)
        ids += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, pages
        between(number)
    raise AssertionError("the listing never ended")


def owner_of(client: TestClient) -> str:
    return client.get("/api/me").json()["owner"]


def test_job_pages_cover_every_job_once_while_jobs_come_and_go(browser: Callable[..., TestClient],
                                                               redis_url: str) -> None:
    a = browser()
    owner = owner_of(a)
    jobs = make_jobs(redis_url, owner, [f"job {i}" for i in range(17)])  # newest last
    newest_first = jobs[::-1]
    added, deleted = [], []

    def meanwhile(page: int) -> None:
        if page == 0:  # one already listed and one not yet listed are deleted; a new one is created
            for job_id in (newest_first[1], newest_first[12]):
                assert a.delete(f"/api/jobs/{job_id}").status_code == 204
                deleted.append(job_id)
            added.extend(make_jobs(redis_url, owner, ["late"]))

    ids, pages = walk(a, "/api/jobs", meanwhile, limit=5)
    assert len(ids) == len(set(ids)), "a job was listed twice"
    assert ids == [j for j in newest_first if j != newest_first[12]], "each job once, newest first"
    assert added[0] not in ids  # newer than the walk's start: the next first page shows it
    assert [len(p["items"]) for p in pages] == [5, 5, 5, 1] and pages[0]["total"] == 17
    assert a.get("/api/jobs", params={"limit": 5}).json()["items"][0]["id"] == added[0]


def test_the_last_page_says_so_and_offsets_still_work(browser: Callable[..., TestClient], redis_url: str) -> None:
    a = browser()
    jobs = make_jobs(redis_url, owner_of(a), [f"j{i}" for i in range(6)])[::-1]
    first = a.get("/api/jobs", params={"limit": 3}).json()
    last = a.get("/api/jobs", params={"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [j["id"] for j in first["items"] + last["items"]] == jobs
    assert last["next_cursor"] is None  # exactly at the end: no empty page after it
    by_offset = a.get("/api/jobs", params={"limit": 2, "offset": 2}).json()
    assert [j["id"] for j in by_offset["items"]] == jobs[2:4] and by_offset["offset"] == 2
    rest = a.get("/api/jobs", params={"limit": 5, "cursor": by_offset["next_cursor"]}).json()
    assert [j["id"] for j in rest["items"]] == jobs[4:] and rest["next_cursor"] is None


def test_another_owners_jobs_never_appear(browser: Callable[..., TestClient], redis_url: str) -> None:
    a, b = browser(), browser("10.1.0.2")
    mine = set(make_jobs(redis_url, owner_of(a), [f"a{i}" for i in range(4)], checkpoint=True))
    theirs = set(make_jobs(redis_url, owner_of(b), [f"b{i}" for i in range(5)], checkpoint=True))
    for client, own, other in ((a, mine, theirs), (b, theirs, mine)):
        jobs, _ = walk(client, "/api/jobs", limit=2)
        models, _ = walk(client, "/api/models", limit=2)
        assert set(jobs) == own and not set(jobs) & other
        assert {m for m in models if not m.startswith("example-")} == own
        searched, _ = walk(client, "/api/jobs", q="b", limit=2)  # a search stays within the caller's jobs
        assert set(searched) == (theirs if client is b else set())
    some = next(iter(theirs))
    assert a.get(f"/api/jobs/{some}").status_code == 404 and a.get(f"/api/models/{some}").status_code == 404
    listed: set[str] = set()
    cursor = None
    while True:
        page = a.get("/api/jobs", params={"limit": 4, **({"cursor": cursor} if cursor else {})},
                     headers={"X-Owner-Token": ADMIN}).json()
        listed |= {j["id"] for j in page["items"]}
        if not (cursor := page["next_cursor"]):
            break
    assert mine | theirs <= listed  # the operator sees everybody's


def test_model_pages_examples_first_then_own_shared_public_each_once(browser: Callable[..., TestClient],
                                                                      redis_url: str) -> None:
    a, b = browser(), browser("10.1.0.3")
    owner = owner_of(a)
    without = make_jobs(redis_url, owner, ["queued 1", "queued 2"])  # no checkpoint: no model
    own = make_jobs(redis_url, owner, [f"mine {i}" for i in range(5)], checkpoint=True)
    published_own = own[1]
    assert a.post(f"/api/jobs/{published_own}/publish").status_code == 204
    other = make_jobs(redis_url, owner_of(b), ["theirs shared", "theirs public", "theirs private"],
                      checkpoint=True)
    token = b.post(f"/api/jobs/{other[0]}/shares").json()["token"]
    assert a.get(f"/s/{token}", follow_redirects=False).status_code == 303
    assert b.post(f"/api/jobs/{other[1]}/publish").status_code == 204

    ids, pages = walk(a, "/api/models", limit=2)
    examples = [m["id"] for m in pages[0]["items"] if m["access"] == "example"]
    assert all(m["access"] != "example" for p in pages[1:] for m in p["items"])  # examples on the first page only
    jobs = [i for i in ids if i not in examples]
    assert len(jobs) == len(set(jobs))
    access = {m["id"]: m["access"] for p in pages for m in p["items"]}
    assert jobs[:5] == own[::-1] and {access[j] for j in own} == {"owner"}  # its own published one: as its own
    assert access[other[0]] == "shared" and access[other[1]] == "public" and other[2] not in access
    assert not set(without) & set(ids)


def test_search_finds_a_job_past_the_first_page(browser: Callable[..., TestClient], redis_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    a = browser()
    owner = owner_of(a)
    make_jobs(redis_url, owner, ["Gecko"], checkpoint=True)
    wanted = make_jobs(redis_url, owner, ["Needle in the stack"], checkpoint=True)[0]
    make_jobs(redis_url, owner, [f"hay {i}" for i in range(8)], checkpoint=True)
    assert wanted not in [j["id"] for j in a.get("/api/jobs", params={"limit": 5}).json()["items"]]
    assert wanted not in [m["id"] for m in a.get("/api/models", params={"limit": 5}).json()["items"]]
    assert [j["id"] for j in a.get("/api/jobs", params={"q": "NEEDLE"}).json()["items"]] == [wanted]
    found = a.get("/api/models", params={"q": "needle"}).json()
    assert [m["id"] for m in found["items"]] == [wanted] and found["next_cursor"] is None
    # A scan budget of 3 index entries a request: short pages with a cursor, and the walk still finds it.
    monkeypatch.setattr(listing, "SCAN_BUDGET", 3)
    first = a.get("/api/models", params={"q": "needle"}).json()
    assert first["items"] == [] and first["next_cursor"] is not None
    ids, pages = walk(a, "/api/models", q="needle")
    assert ids == [wanted] and len(pages) >= 3
    ids, _ = walk(a, "/api/jobs", q="needle")
    assert ids == [wanted]


@pytest.mark.parametrize(("path", "params", "says"), [
    ("/api/jobs", {"cursor": "not a cursor"}, "cursor"),
    ("/api/models", {"cursor": "%%%"}, "cursor"),
    ("/api/jobs", {"cursor": Cursor("models", "owner", 1.0, "a").encode()}, "not a cursor of this listing"),
    ("/api/models", {"cursor": Cursor("jobs", "owner", 1.0, "a").encode()}, "not a cursor of this listing"),
    ("/api/jobs", {"cursor": Cursor("jobs", "all", 1.0, "a").encode()}, "not a cursor of this listing"),
    ("/api/jobs", {"cursor": Cursor("jobs", "owner", 1.0, "a").encode(), "offset": 3}, "either cursor"),
    ("/api/jobs", {"limit": 0}, "limit"),
    ("/api/jobs", {"limit": 101}, "limit"),
    ("/api/models", {"limit": 201}, "limit"),
    ("/api/models", {"q": "x" * 101}, "q"),
])
def test_bad_cursors_and_limits_are_422_saying_what(browser: Callable[..., TestClient], path: str, params: dict,
                                                     says: str) -> None:
    a = browser()
    a.get("/api/me")
    answer = a.get(path, params=params)
    assert answer.status_code == 422, answer.text
    assert says in answer.text


# --- the page reader itself (backend.storage.listing.scan), on a real Redis ---------------------------------


def test_scan_pages_through_ties_budgets_and_phases(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.zadd("t:one", {f"m{i:02d}": 5.0 for i in range(12)})  # all tied on one score
    client.zadd("t:two", {f"n{i}": float(i) for i in range(4)})
    phases = [("one", IndexSource(client, "t:one")), ("list", ListSource(["x1", "x3", "x2"])),
              ("two", IndexSource(client, "t:two"))]
    want = [f"m{i:02d}" for i in range(11, -1, -1)] + ["x3", "x2", "x1"] + ["n3", "n2", "n1", "n0"]

    def everything(_: str, ids: list[str]) -> list[str | None]:
        return list(ids)

    for limit, budget in ((1, 100), (4, 100), (5, 3), (30, 7)):
        got, cursor, pages = [], None, 0
        while True:
            page = scan("t", phases, cursor, limit, everything, budget=budget)
            got += [item for _, item in page.items]
            pages += 1
            assert len(page.items) <= limit and page.read <= budget
            if page.next is None:
                break
            cursor = Cursor.decode(page.next.encode(), "t", ["one", "list", "two"])
        assert got == want, (limit, budget)
    odd = scan("t", phases, None, 3, lambda _, ids: [i if i[-1] in "13579" else None for i in ids])
    assert [item for _, item in odd.items] == ["m11", "m09", "m07"]


def test_the_retention_sweep_reads_the_index_in_chunks_and_misses_none(app_factory: Callable[..., object],
                                                                        redis_url: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.storage import retention

    monkeypatch.setattr(retention, "SWEEP_CHUNK", 2)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()  # only this test's jobs (the module's others would expire too)
    app = app_factory(retention_days=1)
    with TestClient(app, client=("10.2.0.9", 1)):
        expired = make_jobs(redis_url, new_job_id(), [f"old {i}" for i in range(7)], checkpoint=True)
        kept = make_jobs(redis_url, new_job_id(), ["still queued"])
        client.zadd("nca:jobs", {job_id: 1000.0 for job_id in expired[:4] + kept})  # ties across chunks
        deleted = app.state.storage.deletion.sweep(time.time() + 2 * 86400)
    assert sorted(deleted) == sorted(expired)
    assert client.zrange("nca:jobs", 0, -1) == [kept[0].encode()]


def commands(client: redis.Redis, *names: str) -> int:
    """How many times the server ran these commands so far (INFO commandstats, server-wide)."""
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names)


def test_no_listing_reads_every_job(browser: Callable[..., TestClient], redis_url: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted by the real server: a page reads its rows' records, and a scan stops at its budget."""
    a = browser()
    client = redis.Redis.from_url(redis_url)
    make_jobs(redis_url, owner_of(a), [f"no model yet {i}" for i in range(150)])  # none has a model
    monkeypatch.setattr(listing, "SCAN_BUDGET", 40)
    before = commands(client, "hmget", "hgetall")
    page = a.get("/api/models").json()  # nothing to show in 150 jobs: the scan stops after 40
    assert [m for m in page["items"] if m["access"] != "example"] == [] and page["next_cursor"]
    assert commands(client, "hmget", "hgetall") - before <= 40
    before = commands(client, "hmget", "hgetall")
    assert a.get("/api/jobs", params={"q": "nothing is called this"}).json()["next_cursor"]
    assert commands(client, "hmget", "hgetall") - before <= 40
    before = commands(client, "hgetall")
    assert len(a.get("/api/jobs", params={"limit": 7}).json()["items"]) == 7
    assert commands(client, "hgetall") - before == 7  # the page's records, no other
