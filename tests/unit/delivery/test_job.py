"""daemon.delivery.job: the outcome of an attempt, built on the hot path as ``outcome_for`` builds any other."""

from __future__ import annotations

import pytest

from daemon.core.event import Event
from daemon.core.model import DELIVERED, FAILED, REDELIVERY, Attempt
from daemon.delivery.job import Job, attempt_outcome, outcome_for


def _job(history: list[Attempt] | None = None, redelivery_of_id: str | None = None) -> Job:
    event = Event(b'{"type": "lead.created"}', "lead.created", "leads", 2, 41, 1_700_000_000_000, "k")
    return Job(event=event, delivery_id="msg_1", ack=None, attempt=3, trigger=REDELIVERY, history=history,
               endpoint_id="ep", redelivery_of_id=redelivery_of_id)  # fmt: skip


@pytest.mark.parametrize(
    ("job", "status", "http_status", "error", "sent_id", "retry_after_s"),
    [
        (_job(), DELIVERED, 200, None, None, None),  # what most attempts have: the optional fields left empty
        (_job(redelivery_of_id="msg_1-1-a"), FAILED, 503, "HTTP 503", "wire-1", 2.5),
        (_job(), FAILED, 429, "", "", 0.0),  # empty but set: kept as they are, not taken for None
        (
            _job(
                history=[
                    Attempt(attempt=1, attempt_id="msg_1-1-a", status=FAILED, http_status=500, error="HTTP 500", at="t")
                ]
            ),
            FAILED,
            None,
            "timeout: no complete response within 5 s",
            None,
            None,
        ),
    ],
)
def test_an_attempts_outcome_is_the_one_outcome_for_builds(
    job: Job, status: str, http_status: int | None, error: str | None, sent_id: str | None, retry_after_s: float | None
) -> None:
    made = attempt_outcome("ep", job, status, http_status, 12.5, "ok", error, "standard", "msg_1-3-b", sent_id,
                           retry_after_s)  # fmt: skip
    expected = outcome_for("ep", job, status, http_status=http_status, duration_ms=12.5, response_body="ok",
                           error=error, profile="standard", attempt_id="msg_1-3-b", sent_id=sent_id,
                           redelivery_of_id=job.history[-1].attempt_id if job.history else job.redelivery_of_id,
                           retry_after_s=retry_after_s)  # fmt: skip
    expected.timestamp = made.timestamp
    assert made == expected
    assert (made.error, made.sent_id, made.retry_after_s) == (error, sent_id, retry_after_s)
    assert made.redelivery_of_id == (job.history[-1].attempt_id if job.history else job.redelivery_of_id)
    assert (made.source_topic, made.source_partition, made.source_offset, made.trigger) == ("leads", 2, 41, REDELIVERY)
