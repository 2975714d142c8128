from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.events import ItemStatusChanged, JobOpened
from job_tracker.status import JOB_FAILED_MESSAGE, apply_event, job_state

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def status(item: str, state: str, seconds: int, reason: str | None = None) -> ItemStatusChanged:
    return ItemStatusChanged(
        job_id="j",
        item_id=item,
        status=state,  # type: ignore[arg-type]
        reason=reason,
        service="t",
        at=T0 + timedelta(seconds=seconds),
    )


def fold(*events: object) -> dict[str, object]:
    status = None
    for event in events:
        status = apply_event(status, event)  # type: ignore[arg-type]
    assert status is not None
    return status.model_dump(mode="json")


def test_a_new_job_is_queued_until_work_starts() -> None:
    doc = fold(JobOpened(job_id="j", kind="direct", item_ids=("a", "b")))
    assert doc["status"] == "queued"
    assert doc["total"] == 2


def test_a_job_is_done_when_every_item_completed() -> None:
    doc = fold(
        JobOpened(job_id="j", kind="direct", item_ids=("a", "b")),
        status("a", "processing", 1),
        status("a", "completed", 2),
    )
    assert doc["status"] == "processing"
    doc = fold(
        JobOpened(job_id="j", kind="direct", item_ids=("a", "b")),
        status("a", "completed", 2),
        status("b", "completed", 3),
    )
    assert doc["status"] == "done"
    assert doc["finished_at"] == (T0 + timedelta(seconds=3)).isoformat()


def test_one_failed_item_makes_the_finished_job_an_error_with_the_reference_message() -> None:
    doc = fold(
        JobOpened(job_id="j", kind="direct", item_ids=("a", "b")),
        status("a", "error", 1, "Duplicate file"),
        status("b", "completed", 2),
    )
    assert doc["status"] == "error"
    assert doc["message"] == JOB_FAILED_MESSAGE
    assert doc["items"]["a"]["reason"] == "Duplicate file"  # type: ignore[index]
    assert doc["error_count"] == 1


def test_statuses_never_move_backwards_when_events_arrive_out_of_order() -> None:
    doc = fold(
        JobOpened(job_id="j", kind="direct", item_ids=("a",)),
        status("a", "completed", 5),
        status("a", "processing", 3),
    )
    assert doc["items"]["a"]["status"] == "completed"  # type: ignore[index]
    assert doc["items"]["a"]["started_at"] is not None  # type: ignore[index]


def test_a_later_completion_replaces_an_earlier_error_after_a_replay() -> None:
    doc = fold(
        JobOpened(job_id="j", kind="direct", item_ids=("a",)),
        status("a", "error", 5, "Processing failed"),
        status("a", "completed", 9),
    )
    assert doc["status"] == "done"
    assert doc["items"]["a"]["reason"] is None  # type: ignore[index]


def test_items_seen_before_the_job_opened_are_kept() -> None:
    doc = fold(
        status("a", "processing", 1), JobOpened(job_id="j", kind="direct", item_ids=("a", "b"))
    )
    assert doc["total"] == 2
    assert doc["status"] == "processing"


def test_archive_children_count_towards_the_job() -> None:
    child = ItemStatusChanged(
        job_id="j", item_id="c1", status="queued", service="zip", parent_item_id="a", at=T0
    )
    doc = fold(
        JobOpened(job_id="j", kind="archive", item_ids=("a",)), child, status("a", "completed", 2)
    )
    assert doc["total"] == 2
    assert doc["status"] == "processing"


def test_the_job_state_is_derived_in_one_place_for_tracker_and_gateway() -> None:
    assert job_state([]) == ("queued", None)
    assert job_state(["queued", "queued"]) == ("queued", None)
    assert job_state(["queued", "completed"]) == ("processing", None)
    assert job_state(["completed", "completed"]) == ("done", None)
    assert job_state(["completed", "error"]) == ("error", JOB_FAILED_MESSAGE)
    assert job_state(["completed"], opened=False) == ("queued", None)
