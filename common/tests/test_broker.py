"""The embedded broker's transport: messages written by several processes' producers are read whole."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue
from kombu.transport import filesystem

from common import broker
from common.settings import broker_transport

EXCHANGE = Exchange("broker-test", type="direct")


def _queue() -> Queue:
    # A new name per test: kombu remembers declared bindings per process, and would not record a known one
    # in another test's control folder.
    name = f"race{uuid.uuid4().hex}"
    return Queue(name, EXCHANGE, routing_key=name)


def _connection(root: Path) -> Connection:
    return Connection(
        "filesystem://localhost/",
        transport=broker_transport("filesystem://localhost/"),
        transport_options={
            "data_folder_in": str(root),
            "data_folder_out": str(root),
            "control_folder": str(root),
            "store_processed": False,
            "polling_interval": 0.01,
        },
    )


def test_the_filesystem_url_selects_our_transport_and_other_urls_their_scheme() -> None:
    assert broker_transport("filesystem://localhost/") == "common.broker:FilesystemTransport"
    assert broker_transport("amqp://guest:guest@127.0.0.1:5672//") is None


def test_a_consumer_racing_producers_reads_every_message_whole(tmp_path: Path) -> None:
    """kombu's own transport creates the file before writing it, so a consumer polling at that moment reads
    an empty message. Ours renames a finished file into place: every message arrives, decoded."""
    queue = _queue()
    with _connection(tmp_path) as connection:
        queue(connection.default_channel).declare()
    producers, per_producer = 4, 150
    payload = {"text": "x" * 20_000}  # large enough that writing it is not instantaneous

    def produce(number: int) -> None:
        with _connection(tmp_path) as connection:
            producer = connection.Producer(serializer="json")
            for index in range(per_producer):
                producer.publish({**payload, "n": (number, index)}, exchange=EXCHANGE, routing_key=queue.routing_key)

    threads = [threading.Thread(target=produce, args=(number,)) for number in range(producers)]
    for thread in threads:
        thread.start()
    received: list[tuple[int, int]] = []
    with _connection(tmp_path) as connection:
        simple = connection.SimpleQueue(queue)
        while len(received) < producers * per_producer:
            message = simple.get(timeout=10)
            body = message.decode()
            assert body["text"] == payload["text"]
            received.append(tuple(body["n"]))
            message.ack()
        simple.close()
    for thread in threads:
        thread.join()
    assert sorted(received) == sorted((number, index) for number in range(producers) for index in range(per_producer))
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".partial-")] == []


@pytest.mark.parametrize(
    ("transport", "module", "visible_while_written"),
    [("common.broker:FilesystemTransport", broker, False), ("kombu.transport.filesystem:Transport", filesystem, True)],
    ids=["ours", "kombu's"],
)
def test_no_consumer_can_see_a_message_file_before_it_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str, module: Any, visible_while_written: bool
) -> None:
    """Look at the folder at the moment the message is being encoded, i.e. while its file is being written:
    kombu's transport already shows an empty ``.msg`` file there (the race that crashed a worker), ours none."""
    seen: list[str] = []
    real_dumps = module.dumps

    def dumps_and_look(payload: Any) -> str:
        seen.extend(path.name for path in tmp_path.iterdir() if path.name.endswith(f".{queue.name}.msg"))
        return real_dumps(payload)

    monkeypatch.setattr(module, "dumps", dumps_and_look)
    queue = _queue()
    with (
        _connection(tmp_path) as connection,
        Connection(
            "filesystem://localhost/", transport=transport, transport_options=connection.transport_options
        ) as writer,
    ):
        queue(writer.default_channel).declare()
        writer.Producer(serializer="json").publish({"n": 1}, exchange=EXCHANGE, routing_key=queue.routing_key)
        message = connection.SimpleQueue(queue).get(timeout=5)
        assert message.decode() == {"n": 1}
    assert bool(seen) is visible_while_written
