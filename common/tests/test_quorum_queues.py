"""The RabbitMQ side of the delivery limit, as declarations and parsing (the real broker: test_delivery_limit)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.dead_letters import dead_letter_from_message
from common.events import event_queue, is_quorum, retry_delay_queue
from common.tasks import uses_quorum_queues
from tests.celery_app import app as celery_app


def test_event_queue_with_a_delivery_limit_is_a_quorum_queue_dead_lettering_to_its_dead_queue() -> None:
    queue = event_queue("shop", ["thing.happened"], delivery_limit=7)

    assert is_quorum(queue)
    assert queue.queue_arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 7,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "shop.events.dead",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_event_queue_without_a_delivery_limit_is_a_classic_queue() -> None:
    queue = event_queue("shop", ["thing.happened"])

    assert not is_quorum(queue)
    assert not queue.queue_arguments


@pytest.mark.parametrize("limit", [0, -1])
def test_a_delivery_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        event_queue("shop", ["thing.happened"], delivery_limit=limit)


def test_retry_delay_queue_holds_a_retry_for_its_delay_then_sends_it_back_to_the_queue_alone() -> None:
    queue = retry_delay_queue("shop.events", 0.25)

    assert queue.name == "shop.events.retry.250ms"
    assert queue.exchange.name == ""
    assert queue.routing_key == queue.name
    arguments = queue.queue_arguments or {}
    assert arguments["x-message-ttl"] == 250
    assert (arguments["x-dead-letter-exchange"], arguments["x-dead-letter-routing-key"]) == ("", "shop.events")
    assert arguments["x-expires"] > arguments["x-message-ttl"]  # never deleted while it holds a retry


def test_no_native_delayed_delivery_reroute_outside_rabbitmq() -> None:
    # The test project's in-memory broker: Celery's countdown (an ETA in the worker) serves, as on files.
    assert not uses_quorum_queues(celery_app)


def test_dead_letter_written_by_our_worker_is_read_as_is() -> None:
    body = {"event": {"id": "e1"}, "queue": "shop.events", "attempts": 5, "error": "ValueError()", "dead_at": "t"}

    letter = dead_letter_from_message("shop.events", body, {})

    assert (letter.event_id, letter.attempts, letter.error) == ("e1", 5, "ValueError()")


def test_task_message_dead_lettered_by_rabbitmq_is_read_as_a_dead_letter_of_its_queue() -> None:
    died = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    headers = {"retries": 2, "x-death": [{"reason": "delivery_limit", "queue": "shop.events", "time": died}]}

    letter = dead_letter_from_message("shop.events", [[], {"event": {"id": "e2"}}, {}], headers)

    assert letter.event_id == "e2"
    assert letter.queue == "shop.events"
    assert letter.attempts == 3  # two retries, then the attempt that never finished
    assert "delivery_limit" in letter.error
    assert "x-delivery-limit" in letter.error
    assert letter.dead_at == died.isoformat()


def test_a_message_rabbitmq_dead_lettered_for_another_reason_says_which() -> None:
    headers = {"x-death": [{"reason": "rejected", "queue": "shop.events", "time": "t"}]}

    letter = dead_letter_from_message("shop.events", [[], {"event": {"id": "e3"}}, {}], headers)

    assert letter.error.startswith("dead-lettered by RabbitMQ (rejected)")
    assert "x-delivery-limit" not in letter.error
