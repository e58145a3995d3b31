"""Drives a running syncjobs with Airweave's official Python SDK (airweave-sdk), unchanged.

Usage: python airweave_sdk_check.py BASE_URL API_KEY
Walks the life of a sync as a new user would: create a collection (and rename it), a
`timed` source connection, run it, watch it run, cancel it, see it cancelled, make a `stub`
sync fail on purpose, and hit the errors the contract promises. Exits non-zero (with the reason) on the first broken promise.
"""

import sys
import time

from airweave import AirweaveSDK
from airweave.core.api_error import ApiError


def wait_for(what, probe, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def expect_error(status, detail, call):
    try:
        call()
    except ApiError as e:
        assert e.status_code == status, (e.status_code, e.body)
        # The SDK hands some errors over as dicts, others as typed models with `.detail`.
        got = e.body.get("detail") if isinstance(e.body, dict) else getattr(e.body, "detail", e.body)
        assert got == detail, (got, detail)
        return
    raise SystemExit(f"expected {status} {detail!r}, the call succeeded")


def main(base_url, api_key):
    client = AirweaveSDK(api_key=api_key, base_url=base_url, timeout=30)

    suffix = str(int(time.time() * 1000))[-8:]
    collection = client.collections.create(name=f"SDK check {suffix}")
    assert collection.readable_id.startswith("sdk-check"), collection.readable_id
    assert collection.vector_size == 0 and collection.embedding_model_name == "none"
    assert client.collections.get(collection.readable_id).id == collection.id
    assert any(c.id == collection.id for c in client.collections.list(limit=100))

    # PATCH: the SDK's update, the name changed, the readable id kept.
    renamed = client.collections.update(collection.readable_id, name=f"SDK renamed {suffix}")
    assert renamed.id == collection.id and renamed.name == f"SDK renamed {suffix}", renamed
    assert renamed.readable_id == collection.readable_id, renamed
    assert client.collections.get(collection.readable_id).name == renamed.name
    expect_error(404, "Collection not found", lambda: client.collections.update("no-such-collection", name="Good Name"))

    sc = client.source_connections.create(
        short_name="timed",
        readable_collection_id=collection.readable_id,
        name="Timed source",
        config={"entity_count": 400, "duration_seconds": 20},
        authentication={"credentials": {"timed_key": "any"}},
        sync_immediately=False,
    )
    assert sc.short_name == "timed"
    listed = client.source_connections.list(collection=collection.readable_id)
    assert [item.id for item in listed] == [sc.id], listed

    job = client.source_connections.run(sc.id)
    assert str(job.status).lower().endswith("pending"), job.status

    def running():
        jobs = client.source_connections.get_source_connection_jobs(sc.id)
        j = next(j for j in jobs if j.id == job.id)
        return j if str(j.status).lower().endswith("running") and (j.entities_inserted or 0) > 0 else None

    seen = wait_for("the job to run and insert entities", running)
    try:
        client.source_connections.run(sc.id)
        raise SystemExit("a second run while one is running must be refused")
    except ApiError as e:
        assert e.status_code == 400, e.status_code
        assert e.body["detail"].startswith("Cannot start new sync: a sync job is already"), e.body

    cancelling = client.source_connections.cancel_job(sc.id, job.id)
    assert str(cancelling.status).lower().endswith(("cancelling", "cancelled")), cancelling.status

    def cancelled():
        j = next(j for j in client.source_connections.get_source_connection_jobs(sc.id) if j.id == job.id)
        return j if str(j.status).lower().endswith("cancelled") else None

    done = wait_for("the job to be cancelled", cancelled)
    assert done.completed_at is not None and done.started_at is not None
    assert (done.entities_inserted or 0) >= (seen.entities_inserted or 0), "counts never go down"

    conn = client.source_connections.get(sc.id)
    assert conn.entities is not None and conn.entities.total_entities == done.entities_inserted, (
        conn.entities,
        done.entities_inserted,
    )

    expect_error(400, "Cannot cancel job in cancelled state", lambda: client.source_connections.cancel_job(sc.id, job.id))

    # Airweave's stub source: a sync that fails on purpose.
    stub = client.source_connections.create(
        short_name="stub",
        readable_collection_id=collection.readable_id,
        name="Stub source",
        config={"entity_count": 50, "fail_after": 3},
        authentication={"credentials": {"stub_key": "stub"}},
    )
    assert stub.short_name == "stub" and stub.config["fail_after"] == 3, stub.config

    def stub_failed():
        jobs = client.source_connections.get_source_connection_jobs(stub.id)
        return jobs[0] if jobs and str(jobs[0].status).lower().endswith("failed") else None

    failed = wait_for("the stub's job to fail", stub_failed)
    assert "Stub source simulated failure after 3 entities (fail_after=3)" in (failed.error or ""), failed.error
    expect_error(404, "Source connection not found", lambda: client.source_connections.get("00000000-0000-4000-8000-000000000000"))
    expect_error(404, "Collection not found", lambda: client.collections.get("no-such-collection"))

    bad = AirweaveSDK(api_key="not-a-key-of-anyone", base_url=base_url)
    expect_error(403, "Invalid or expired API key", lambda: bad.collections.list())

    client.source_connections.delete(sc.id)
    expect_error(404, "Source connection not found", lambda: client.source_connections.get(sc.id))
    client.collections.delete(collection.readable_id)
    expect_error(404, "Collection not found", lambda: client.collections.get(collection.readable_id))
    print("airweave-sdk: 1 passed, 0 failed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
