"""The Redis key layout is documented from one place: backend/storage/keys.py."""

from __future__ import annotations

from backend.storage import jobs, keys, queue, quota, stream_clients, workers
from backend.storage.jobs import Job, RecordCodec
from tests.conftest import REPO_ROOT


def test_docs_table_is_the_generated_one() -> None:
    docs = (REPO_ROOT / "docs" / "api.md").read_text()
    assert keys.markdown_table() in docs, "docs/api.md's key table is stale: paste `python -m backend.storage.keys`"
    headings = [line for line in docs.splitlines() if line.startswith(("## ", "### "))]
    assert sorted(set(headings)) == sorted(headings), "docs/api.md repeats a section (a merge pasted it twice?)"


def test_every_key_the_code_names_is_in_the_table() -> None:
    names = {key.pattern for key in keys.LAYOUT} | {key.prefix for key in keys.LAYOUT}
    used = [jobs.JOBS_KEY, jobs.ACTIVE_KEY, jobs.LEASES_KEY, jobs.CHECKPOINT_CHANNEL,
            keys.job_key("").rstrip(":") + ":",
            workers.WORKER_PREFIX, workers.WORKERS_KEY, quota.COUNTS_KEY, quota.JOBS_KEY, quota.PENDING_PREFIX,
            quota.LEGACY_ACTIVE_KEY, quota.LEGACY_OWNER_KEY,
            stream_clients.CLIENT_PREFIX, queue.QUEUE, queue.UNACKED_KEY, queue.UNACKED_INDEX_KEY]
    assert [name for name in used if name not in names] == []
    parts = {key.pattern.removeprefix(keys.JOB.pattern + ":") for key in keys.LAYOUT
             if key.pattern.startswith(keys.JOB.pattern + ":")}
    assert parts == {"target", "upload", "model", "history", "history:weights", "lease", "owner", "shares",
                     "dispatched"}


def test_the_record_codec_reads_the_schema_off_the_model() -> None:
    kinds = RecordCodec.fields()
    assert set(kinds) == {info.serialization_alias or name for name, info in Job.model_fields.items()}
    assert kinds["options"] == ("json", False)  # the spec, under its stored name
    assert kinds["loss_history"] == ("json", False) and kinds["plan"] == ("json", True)
    assert kinds["cancel_requested"] == ("flag", False) and kinds["interrupted_by"] == ("plain", True)
    assert kinds["total"] == ("plain", False) and kinds["loss"] == ("plain", True)
    encoded = dict(zip(*[iter(RecordCodec.encode({"plan": None, "resumed_from": [3], "cancel_requested": True,
                                                  "loss": 0.5}))] * 2, strict=True))
    assert encoded == {"plan": "", "resumed_from": "[3]", "cancel_requested": "1", "loss": 0.5}
    decoded = RecordCodec.decode({b"plan": b"", b"resumed_from": b"[3]", b"cancel_requested": b"1", b"loss": b"0.5",
                                  b"owner": b"tok"})
    assert decoded == {"plan": None, "resumed_from": [3], "cancel_requested": True, "loss": "0.5", "owner": "tok"}
