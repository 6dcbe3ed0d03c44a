"""A service's answer that could not be passed on as it came: the client gets a well-framed response or a
502, never a 500, and the upstream connection and the instance's outstanding count are always released."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.signals import request_finished
from django.db import close_old_connections
from django.test import Client

from proxy import balancer
from proxy.tests.utils import RawServer, read_request


def answering_every_request_with(raw_answer: bytes) -> Callable[[socket.socket], None]:
    """A service's ``serve``: the same raw bytes for every request (GETs, no body), keeping the connection."""

    def serve(conn: socket.socket) -> None:
        with conn:
            while read_request(conn):
                conn.sendall(raw_answer)

    return serve


@pytest.fixture
def orders_answering(settings: Any) -> Iterator[Any]:
    services: list[RawServer] = []

    def start(raw_answer: bytes) -> RawServer:
        services.append(RawServer(answering_every_request_with(raw_answer)))
        settings.UPSTREAMS = {**settings.UPSTREAMS, "orders": services[-1].url}
        balancer.reset()
        return services[-1]

    yield start
    for service in services:
        service.close()


def get_orders(bearer: dict[str, str]) -> Any:
    client = Client(raise_request_exception=False)
    return client.get("/api/v1/orders/", HTTP_AUTHORIZATION=bearer["Authorization"])


def close(response: Any) -> None:
    """As a server does once the client has the body (this releases the upstream connection); without the
    database hook, as Django's test client runs its requests."""
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


def outstanding() -> list[int]:
    return [instance.outstanding for instance in balancer.balancer("orders").instances]


def test_a_folded_header_is_passed_on_unfolded(orders_answering: Any, bearer: dict[str, str]) -> None:
    body = b'{"ok": true}'
    orders_answering(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Folded: a\r\n b\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    responses = [get_orders(bearer) for _ in range(3)]

    assert [response.status_code for response in responses] == [200] * 3
    assert responses[0]["X-Folded"] == "a b"
    assert b"".join(responses[0].streaming_content) == body
    for response in responses:
        close(response)
    assert outstanding() == [0]


def test_content_length_beside_transfer_encoding_is_not_passed_on(
    orders_answering: Any, bearer: dict[str, str]
) -> None:
    orders_answering(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )

    response = get_orders(bearer)
    body = b"".join(response.streaming_content)
    close(response)

    assert (response.status_code, body) == (200, b"hello")
    assert "Content-Length" not in response
    assert outstanding() == [0]


def test_a_status_django_cannot_send_is_a_502_and_releases_the_instance(
    orders_answering: Any, bearer: dict[str, str]
) -> None:
    orders_answering(b"HTTP/1.1 999 Odd\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")

    responses = [get_orders(bearer) for _ in range(3)]

    assert [response.status_code for response in responses] == [502] * 3
    error = responses[0].json()["error"]
    assert error["code"] == "upstream_error"
    assert error["details"] == {"service": "orders", "reason": "invalid_response"}
    assert outstanding() == [0]
