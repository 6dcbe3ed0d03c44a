"""The proxy view through Django's test client (real middleware, real view) against real upstream stubs."""

from __future__ import annotations

import json
import logging
from typing import Any

import jwt
import pytest
from django.conf import settings
from django.test import Client

from common.internal_auth import verify_assertion
from common.logs import JsonFormatter
from proxy import connections
from proxy.tests.upstream_stub import StubUpstream
from proxy.tests.utils import body_of, closed_port_url, json_of


def only_request(stub: StubUpstream) -> Any:
    assert len(stub.received) == 1, stub.received
    return stub.received[0]


def nothing_forwarded(stubs: dict[str, StubUpstream]) -> bool:
    return all(not stub.received for stub in stubs.values())


# Routing


@pytest.mark.parametrize(
    ("method", "path", "service"),
    [
        ("post", "/api/v1/auth/login/", "users"),
        ("post", "/api/v1/users/", "users"),
        ("get", "/api/v1/products/3/", "orders"),
        ("get", "/api/v1/orders/12/", "orders"),
        ("get", "/api/v1/payments/", "payments"),
        ("get", "/admin/payments/", "payments"),
        ("get", "/static/orders/admin/css/base.css", "orders"),
        ("get", "/api/v2/products/?cursor=abc", "orders"),
    ],
)
def test_requests_reach_the_service_that_owns_the_path(
    client: Client, stubs: dict[str, StubUpstream], bearer: dict[str, str], method: str, path: str, service: str
) -> None:
    # when
    response = getattr(client, method)(path, headers=bearer)

    # then
    assert response.status_code == 200
    assert json_of(response)["service"] == service
    assert only_request(stubs[service]).target == path
    assert all(not stub.received for name, stub in stubs.items() if name != service)


def test_path_and_query_string_are_forwarded_unchanged(client: Client, orders: StubUpstream) -> None:
    # when
    response = client.get("/api/v1/products/?category=3&q=red%20shoes&page=2&q=x%26y")

    # then
    assert response.status_code == 200
    assert only_request(orders).target == "/api/v1/products/?category=3&q=red%20shoes&page=2&q=x%26y"


def test_an_unknown_api_path_is_a_json_404_that_reaches_no_service(
    client: Client, stubs: dict[str, StubUpstream]
) -> None:
    response = client.get("/api/v1/nothing-here/")

    assert response.status_code == 404
    assert json_of(response)["error"]["code"] == "route_not_found"
    assert response["X-Request-ID"]
    assert nothing_forwarded(stubs)


def test_a_path_outside_the_api_and_the_admin_is_a_json_404(client: Client) -> None:
    response = client.get("/nothing-here/")

    assert response.status_code == 404
    assert json_of(response)["error"]["code"] == "not_found"


def test_clients_cannot_create_payments(client: Client, stubs: dict[str, StubUpstream], bearer: dict[str, str]) -> None:
    # when
    response = client.post("/api/v1/payments/", {"amount": "10.00"}, content_type="application/json", headers=bearer)

    # then
    assert response.status_code == 405
    assert json_of(response)["error"]["code"] == "method_not_allowed"
    assert response["Allow"] == "GET, HEAD"
    assert nothing_forwarded(stubs)


def test_head_requests_are_forwarded(client: Client, orders: StubUpstream) -> None:
    response = client.head("/api/v1/products/")

    assert response.status_code == 200
    assert only_request(orders).method == "HEAD"


def test_the_service_status_and_body_come_back_unchanged(client: Client, users: StubUpstream) -> None:
    # given
    users.reply(
        "/api/v1/users/",
        status=409,
        body=b'{"error": {"code": "conflict"}}',
        headers=[("Content-Type", "application/json")],
    )

    # when
    response = client.post("/api/v1/users/", {"email": "a@example.com"}, content_type="application/json")

    # then
    assert response.status_code == 409
    assert body_of(response) == b'{"error": {"code": "conflict"}}'
    assert response["Content-Type"] == "application/json"
    assert response["Content-Length"] == str(len(b'{"error": {"code": "conflict"}}'))


def test_a_large_response_streams_back_whole(client: Client, orders: StubUpstream) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, several chunks
    orders.reply("/api/v1/products/", body=body, headers=[("Content-Type", "application/octet-stream")])

    response = client.get("/api/v1/products/export/")

    assert response.streaming
    assert body_of(response) == body


# Authentication and the service assertion


def test_a_required_route_without_a_token_is_401_and_reaches_no_service(
    client: Client, stubs: dict[str, StubUpstream]
) -> None:
    response = client.get("/api/v1/orders/")

    assert response.status_code == 401
    assert json_of(response)["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert nothing_forwarded(stubs)


def test_a_valid_token_becomes_an_assertion_for_the_target_service(
    client: Client, orders: StubUpstream, bearer: dict[str, str]
) -> None:
    # when
    response = client.get("/api/v1/orders/", headers=bearer)

    # then
    assert response.status_code == 200
    received = only_request(orders)
    assertion = received.headers["X-Service-Assertion"]
    principal = verify_assertion(assertion, audience="orders", secret=settings.INTERNAL_AUTH_SECRET)
    assert (principal.id, principal.is_staff, principal.caller) == (7, False, "gateway")
    claims = jwt.decode(assertion, settings.INTERNAL_AUTH_SECRET, algorithms=["HS256"], audience="orders")
    assert claims["sub"] == "7"
    assert claims["aud"] == "orders"
    assert claims["rid"] == received.headers["X-Request-ID"] == response["X-Request-ID"]
    with pytest.raises(jwt.InvalidAudienceError):
        verify_assertion(assertion, audience="payments", secret=settings.INTERNAL_AUTH_SECRET)


def test_a_staff_token_makes_a_staff_assertion(client: Client, payments: StubUpstream, make_token: Any) -> None:
    client.get("/api/v1/payments/", headers={"Authorization": f"Bearer {make_token(sub='3', staff=True)}"})

    assertion = only_request(payments).headers["X-Service-Assertion"]
    principal = verify_assertion(assertion, audience="payments", secret=settings.INTERNAL_AUTH_SECRET)
    assert (principal.id, principal.is_staff) == (3, True)


def test_an_optional_route_without_a_token_is_forwarded_anonymously(client: Client, users: StubUpstream) -> None:
    response = client.post("/api/v1/users/", {"email": "a@example.com"}, content_type="application/json")

    assert response.status_code == 200
    assertion = only_request(users).headers["X-Service-Assertion"]
    principal = verify_assertion(assertion, audience="users", secret=settings.INTERNAL_AUTH_SECRET)
    assert principal.id is None


def test_the_access_token_never_leaves_the_gateway(
    client: Client, orders: StubUpstream, bearer: dict[str, str]
) -> None:
    client.get("/api/v1/orders/", headers=bearer)

    assert "Authorization" not in only_request(orders).headers


def test_web_routes_ignore_the_token_and_call_the_service_anonymously(
    client: Client, users: StubUpstream, bearer: dict[str, str]
) -> None:
    # given a broken token, which on an API route would be refused
    response = client.get("/admin/users/", headers={"Authorization": "Bearer not-a-token"})

    assert response.status_code == 200
    received = only_request(users)
    assert "Authorization" not in received.headers
    principal = verify_assertion(
        received.headers["X-Service-Assertion"], audience="users", secret=settings.INTERNAL_AUTH_SECRET
    )
    assert principal.id is None


# Request headers


def test_headers_a_client_could_forge_are_replaced_by_the_gateway(
    client: Client, orders: StubUpstream, bearer: dict[str, str]
) -> None:
    # given headers the services would believe
    forged = {
        "X-Service-Assertion": "forged",
        "X-User-Id": "1",
        "X-User-Is-Staff": "true",
        "X-Internal-Caller": "payments",
        "X-Forwarded-For": "10.0.0.1",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "Forwarded": "for=10.0.0.1",
        "X-Real-IP": "10.0.0.1",
    }

    # when
    client.get("/api/v1/orders/", headers={**bearer, **forged})

    # then
    received = only_request(orders).headers
    assert received.get_all("X-Service-Assertion") == [received["X-Service-Assertion"]]
    assert (
        verify_assertion(received["X-Service-Assertion"], audience="orders", secret=settings.INTERNAL_AUTH_SECRET).id
        == 7
    )
    for name in ("X-User-Id", "X-User-Is-Staff", "X-Internal-Caller", "Forwarded", "X-Real-IP"):
        assert name not in received
    assert received.get_all("X-Forwarded-For") == ["127.0.0.1"]
    assert received.get_all("X-Forwarded-Host") == ["testserver"]
    assert received.get_all("X-Forwarded-Proto") == ["http"]


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ("https", "https"),
        ("http", "http"),
        ("HTTPS", "https"),
        ("http, https", "https"),  # the right-most value is the one our proxy set
        ("https, http", "http"),
        ("https, ftp", "http"),  # not a value a proxy of ours writes: the socket's scheme
        ("javascript", "http"),
        ("", "http"),
    ],
)
def test_behind_a_trusted_proxy_the_scheme_it_forwarded_is_passed_on(
    client: Client, orders: StubUpstream, settings: Any, sent: str, forwarded: str
) -> None:
    settings.TRUSTED_PROXY_COUNT = 1

    client.get("/api/v1/products/", headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": sent})

    assert only_request(orders).headers.get_all("X-Forwarded-Proto") == [forwarded]


@pytest.mark.parametrize(("trusted", "forwarded_for"), [(0, "203.0.113.7"), (2, "203.0.113.7")])
def test_a_scheme_that_did_not_come_through_every_trusted_proxy_is_not_believed(
    client: Client, orders: StubUpstream, settings: Any, trusted: int, forwarded_for: str
) -> None:
    # no proxy trusted; or two, but the request carries one hop only: it did not pass through both
    settings.TRUSTED_PROXY_COUNT = trusted

    client.get("/api/v1/products/", headers={"X-Forwarded-For": forwarded_for, "X-Forwarded-Proto": "https"})

    assert only_request(orders).headers.get_all("X-Forwarded-Proto") == ["http"]


def test_hop_by_hop_headers_and_those_named_in_connection_are_not_forwarded(
    client: Client, orders: StubUpstream
) -> None:
    # when
    client.get(
        "/api/v1/products/",
        headers={
            "Connection": "keep-alive, X-Foo",
            "X-Foo": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Upgrade": "h2c",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Accept-Language": "fr",
            "X-Client-Version": "3.1",
        },
    )

    # then
    received = only_request(orders).headers
    for name in ("X-Foo", "Keep-Alive", "TE", "Upgrade", "Proxy-Authorization"):
        assert name not in received
    assert received.get("Connection", "keep-alive") == "keep-alive"  # the gateway's own connection
    assert received["Accept-Language"] == "fr"
    assert received["X-Client-Version"] == "3.1"


@pytest.mark.parametrize("named", ["Content-Type", "content-type, Content-Length"])
def test_content_type_named_in_connection_is_not_forwarded_and_the_body_keeps_the_gateways_framing(
    client: Client, users: StubUpstream, named: str
) -> None:
    # when a client names Content-Type (and Content-Length) as hop-by-hop (RFC 9110 7.6.1)
    response = client.post(
        "/api/v1/users/", b'{"a": 1}', content_type="application/json", headers={"Connection": named}
    )

    # then Content-Type stays on the client's connection, and the body goes with the length the gateway read
    assert response.status_code == 200
    received = only_request(users)
    assert "Content-Type" not in received.headers
    assert received.headers["Content-Length"] == "8"
    assert received.body == b'{"a": 1}'


def test_the_gateway_admin_cookies_are_not_forwarded(client: Client, users: StubUpstream) -> None:
    client.get(
        "/admin/users/",
        headers={"Cookie": "gateway_sessionid=abc; users_sessionid=def; gateway_csrftoken=ghi; users_csrftoken=jkl"},
    )

    assert only_request(users).headers["Cookie"] == "users_sessionid=def; users_csrftoken=jkl"


# Response headers


def test_hop_by_hop_response_headers_are_not_returned(client: Client, orders: StubUpstream) -> None:
    # given a service answering with headers about its own connection
    orders.reply(
        "/api/v1/products/",
        headers=[
            ("Connection", "X-Upstream-Hop"),
            ("X-Upstream-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authenticate", "Basic"),
            ("Upgrade", "h2c"),
            ("Trailer", "Expires"),
            ("X-Kept", "yes"),
        ],
    )

    # when
    response = client.get("/api/v1/products/")

    # then
    for name in (
        "Connection",
        "X-Upstream-Hop",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Upgrade",
        "Trailer",
        "Server",
        "Date",
    ):
        assert not response.has_header(name), name
    assert response["X-Kept"] == "yes"
    assert json_of(response)["service"] == "orders"


def test_each_cookie_the_service_sets_comes_back_as_its_own_header(client: Client, users: StubUpstream) -> None:
    users.reply(
        "/admin/users/login/",
        status=302,
        body=b"",
        headers=[
            ("Location", "/admin/users/"),
            (
                "Set-Cookie",
                "users_csrftoken=abc; expires=Thu, 01 Jan 2037 00:00:00 GMT; Path=/admin/users/; SameSite=Lax",
            ),
            ("Set-Cookie", "users_sessionid=def; HttpOnly; Path=/admin/users/; SameSite=Lax"),
        ],
    )

    response = client.post("/admin/users/login/", {"username": "a", "password": "b"})

    assert response.status_code == 302
    assert response["Location"] == "/admin/users/"
    assert [value for name, value in response.items() if name == "Set-Cookie"] == [
        "users_csrftoken=abc; expires=Thu, 01 Jan 2037 00:00:00 GMT; Path=/admin/users/; SameSite=Lax",
        "users_sessionid=def; HttpOnly; Path=/admin/users/; SameSite=Lax",
    ]


# Request ids


def test_a_well_formed_request_id_is_kept_end_to_end(client: Client, orders: StubUpstream) -> None:
    response = client.get("/api/v1/products/", headers={"X-Request-ID": "client-id-0001"})

    assert response["X-Request-ID"] == "client-id-0001"
    assert only_request(orders).headers.get_all("X-Request-ID") == ["client-id-0001"]


def test_a_malformed_request_id_is_replaced(client: Client, orders: StubUpstream) -> None:
    response = client.get("/api/v1/products/", headers={"X-Request-ID": "bad id\twith spaces"})

    new_id = response["X-Request-ID"]
    assert new_id != "bad id\twith spaces"
    assert len(new_id) == 32
    assert only_request(orders).headers["X-Request-ID"] == new_id


def test_gateway_errors_carry_the_request_id(client: Client) -> None:
    response = client.get("/api/v1/orders/", headers={"X-Request-ID": "client-id-0002"})

    assert response.status_code == 401
    assert response["X-Request-ID"] == "client-id-0002"


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1:8000:1", "bad host"])
def test_a_host_the_gateway_does_not_serve_is_a_400_in_the_envelope_logged_with_its_route(
    client: Client, stubs: dict[str, StubUpstream], bearer: dict[str, str], caplog: pytest.LogCaptureFixture, host: str
) -> None:
    # given (the access logger does not propagate to the root logger)
    access = logging.getLogger("gateway.access")
    access.addHandler(caplog.handler)

    # when
    try:
        response = client.get("/api/v1/orders/", headers={**bearer, "Host": host})
    finally:
        access.removeHandler(caplog.handler)

    # then
    assert response.status_code == 400
    assert json_of(response)["error"]["code"] == "invalid_host"
    assert response["RateLimit"].startswith('"default";')
    assert nothing_forwarded(stubs)
    entries = [json.loads(JsonFormatter(service="gateway").format(r)) for r in caplog.records]
    assert [(e["route"], e["status"], e["error"], e["user_id"]) for e in entries] == [
        ("/api/v1/orders/", 400, "invalid_host", 7)
    ]
    assert host not in caplog.text


# Request bodies


def test_a_body_is_forwarded_with_its_type_and_length(
    client: Client, orders: StubUpstream, bearer: dict[str, str]
) -> None:
    response = client.post("/api/v1/orders/", b'{"items": [1, 2]}', content_type="application/json", headers=bearer)

    assert response.status_code == 200
    received = only_request(orders)
    assert received.body == b'{"items": [1, 2]}'
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["Content-Length"] == "17"


def test_a_body_over_the_limit_is_413_and_reaches_no_service(
    client: Client, stubs: dict[str, StubUpstream], bearer: dict[str, str], settings: Any
) -> None:
    settings.MAX_REQUEST_BODY_BYTES = 100

    response = client.post("/api/v1/orders/", b"x" * 101, content_type="application/json", headers=bearer)

    assert response.status_code == 413
    assert json_of(response)["error"]["code"] == "payload_too_large"
    assert nothing_forwarded(stubs)


def test_a_body_at_the_limit_is_forwarded(
    client: Client, orders: StubUpstream, bearer: dict[str, str], settings: Any
) -> None:
    settings.MAX_REQUEST_BODY_BYTES = 100

    response = client.post("/api/v1/orders/", b"x" * 100, content_type="application/json", headers=bearer)

    assert response.status_code == 200
    assert only_request(orders).body == b"x" * 100


def test_content_length_with_transfer_encoding_is_refused(
    client: Client, stubs: dict[str, StubUpstream], bearer: dict[str, str]
) -> None:
    response = client.post(
        "/api/v1/orders/", b"{}", content_type="application/json", headers={**bearer, "Transfer-Encoding": "chunked"}
    )

    assert response.status_code == 400
    assert json_of(response)["error"]["code"] == "bad_request"
    assert nothing_forwarded(stubs)


@pytest.mark.parametrize(
    "request_kwargs",
    [
        pytest.param({"data": b"x" * 101}, id="over the limit"),
        pytest.param({"data": b"{}", "headers": {"Transfer-Encoding": "chunked"}}, id="two framings"),
        pytest.param({"data": b"{}", "CONTENT_LENGTH": "2x"}, id="a bad length"),
    ],
)
def test_a_body_refused_unread_closes_the_clients_connection(
    client: Client, bearer: dict[str, str], settings: Any, request_kwargs: dict[str, Any]
) -> None:
    # A kept-alive connection would make the server read and discard what is left of the body (or find the
    # next request where a body it cannot frame ends) before the client's next request.
    settings.MAX_REQUEST_BODY_BYTES = 100
    headers = {**bearer, **request_kwargs.pop("headers", {})}

    # As gunicorn names itself (test_gunicorn.py shows the connection really closed by a gunicorn process).
    request_kwargs["SERVER_SOFTWARE"] = "gunicorn/27.0.1"

    response = client.post("/api/v1/orders/", content_type="application/json", headers=headers, **request_kwargs)

    assert response.status_code in (400, 413)
    assert response["Connection"] == "close"


def test_a_refusal_before_the_body_is_read_keeps_the_connection(client: Client) -> None:
    response = client.post("/api/v1/orders/", b"{}", content_type="application/json")  # no token: 401

    assert response.status_code == 401
    assert "Connection" not in response


# Upstream failures


def test_a_service_that_is_down_is_503(client: Client, settings: Any) -> None:
    settings.UPSTREAMS = {**settings.UPSTREAMS, "orders": closed_port_url()}

    response = client.get("/api/v1/products/")

    assert response.status_code == 503
    assert json_of(response)["error"] == {
        "code": "upstream_unavailable",
        "message": "A service this request depends on is unavailable.",
        "details": {"service": "orders"},
    }
    assert response["X-Request-ID"]


def test_a_service_slower_than_the_read_timeout_is_504(client: Client, orders: StubUpstream, settings: Any) -> None:
    settings.UPSTREAM_READ_TIMEOUT = 0.2
    orders.reply("/api/v1/products/", delay=1.0)

    response = client.get("/api/v1/products/")

    assert response.status_code == 504
    assert json_of(response)["error"]["code"] == "upstream_timeout"
    assert json_of(response)["error"]["details"] == {"service": "orders"}


def test_pooled_connections_are_reused_between_requests(client: Client, orders: StubUpstream) -> None:
    opened_before = connections.opened
    for _ in range(3):
        response = client.get("/api/v1/products/")
        assert json_of(response)["service"] == "orders"  # reading the body to its end frees the connection

    assert connections.opened - opened_before == 1
    assert len(orders.received) == 3


def test_a_safe_request_on_a_connection_the_service_just_closed_is_retried_once(
    client: Client, orders: StubUpstream
) -> None:
    # given a pooled connection the service closes when it is reused
    body_of(client.get("/api/v1/products/1/"))  # read to the end: the connection goes back to the pool
    orders.drop_reused_connections = True

    # when
    response = client.get("/api/v1/products/2/")

    # then
    assert response.status_code == 200
    assert orders.received[-1].target == "/api/v1/products/2/"


def test_an_unsafe_request_is_not_retried_when_the_exchange_breaks(
    client: Client, orders: StubUpstream, bearer: dict[str, str]
) -> None:
    body_of(client.get("/api/v1/products/1/"))
    orders.drop_reused_connections = True

    response = client.post("/api/v1/orders/", b"{}", content_type="application/json", headers=bearer)

    assert response.status_code == 502
    assert json_of(response)["error"]["code"] == "upstream_error"
    assert [request.method for request in orders.received] == ["GET"]


# Access log


def test_each_proxied_request_logs_one_access_line_without_secrets(
    client: Client, orders: StubUpstream, bearer: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # given (the access logger writes its JSON lines itself and does not propagate to the root logger)
    access = logging.getLogger("gateway.access")
    access.addHandler(caplog.handler)

    # when
    try:
        response = client.get("/api/v1/orders/5/?coupon=SECRET", headers={**bearer, "X-Request-ID": "client-id-0003"})
        body = body_of(response)
    finally:
        access.removeHandler(caplog.handler)

    # then
    formatter = JsonFormatter(service="gateway")
    lines = [formatter.format(record) for record in caplog.records if record.name == "gateway.access"]
    assert len(lines) == 1
    line = lines[0]
    entry = json.loads(line)
    assert entry["request_id"] == "client-id-0003"
    assert (entry["method"], entry["route"], entry["status"]) == ("GET", "/api/v1/orders/", 200)
    assert (entry["upstream_service"], entry["upstream"]) == ("orders", orders.url)
    assert (entry["user_id"], entry["client"], entry["bytes"]) == (7, "127.0.0.1", len(body))
    assert entry["duration_ms"] >= 0
    assert "SECRET" not in line
    assert "/5/" not in line
    assert bearer["Authorization"].split()[1] not in line
