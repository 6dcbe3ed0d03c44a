"""The gateway's own endpoints through Django's test client (real middleware and views) against real
upstream stubs: the composed ``/api/v1/me/overview``, the merged ``/api/schema/`` with its Swagger UI at
``/api/docs/``, and ``/metrics``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from common.internal_auth import verify_assertion
from proxy import docs
from proxy.tests.upstream_stub import StubUpstream
from proxy.tests.utils import body_of, closed_port_url, json_of

OVERVIEW = "/api/v1/me/overview"
USER = {"id": 7, "email": "ada@example.com", "name": "Ada"}
PAYMENT = {"id": 11, "order_id": 3, "status": "succeeded", "amount": "25.00", "currency": "USD"}
ORDERS_PAGE = {
    "count": 2,
    "next": None,
    "previous": None,
    "results": [
        {"id": 3, "status": "confirmed", "payment": {"id": 11, "status": "succeeded", "amount": "25.00"}},
        {"id": 2, "status": "pending", "payment": None},
    ],
}


def reply_json(stub: StubUpstream, path: str, document: Any, **kwargs: Any) -> None:
    stub.reply(path, body=json.dumps(document).encode(), headers=[("Content-Type", "application/json")], **kwargs)


@pytest.fixture
def composed(users: StubUpstream, orders: StubUpstream, payments: StubUpstream, settings: Any) -> None:
    settings.OVERVIEW_CALL_TIMEOUT = 0.5
    reply_json(users, "/api/v1/users/7/", USER)
    reply_json(orders, "/api/v1/orders/", ORDERS_PAGE)
    reply_json(payments, "/api/v1/payments/11/", PAYMENT)


# /api/v1/me/overview


@pytest.mark.usefixtures("composed")
def test_the_overview_composes_the_user_their_orders_and_payments(
    client: Client, stubs: dict[str, StubUpstream], bearer: dict[str, str]
) -> None:
    response = client.get(OVERVIEW, headers={**bearer, "X-Request-ID": "overview-0001"})

    assert response.status_code == 200
    assert json_of(response) == {
        "user": USER,
        "orders": [{**ORDERS_PAGE["results"][0], "payment": PAYMENT}, ORDERS_PAGE["results"][1]],
        "complete": True,
        "missing": [],
    }
    assert response["Cache-Control"] == "private, no-store"
    targets = {name: [request.target for request in stub.received] for name, stub in stubs.items()}
    assert targets == {
        "users": ["/api/v1/users/7/"],
        "orders": ["/api/v1/orders/?page_size=5"],
        "payments": ["/api/v1/payments/11/"],
    }
    for name, stub in stubs.items():
        received = stub.received[0].headers
        principal = verify_assertion(
            received["X-Service-Assertion"], audience=name, secret=settings.INTERNAL_AUTH_SECRET
        )
        assert principal.id == 7
        assert received["X-Request-ID"] == "overview-0001"
        assert "Authorization" not in received


def test_the_services_are_called_in_parallel(
    client: Client, users: StubUpstream, orders: StubUpstream, bearer: dict[str, str], settings: Any
) -> None:
    settings.OVERVIEW_CALL_TIMEOUT = 3.0
    reply_json(users, "/api/v1/users/7/", USER, delay=1.0)
    reply_json(orders, "/api/v1/orders/", {**ORDERS_PAGE, "results": []}, delay=1.0)

    started = time.monotonic()
    response = client.get(OVERVIEW, headers=bearer)
    elapsed = time.monotonic() - started

    assert json_of(response)["complete"] is True
    assert elapsed < 1.7  # not 2 s and more, one after the other (with room for a loaded machine)


@pytest.mark.usefixtures("composed")
def test_a_slow_payment_service_costs_only_the_payment_details(
    client: Client, payments: StubUpstream, bearer: dict[str, str]
) -> None:
    reply_json(payments, "/api/v1/payments/11/", PAYMENT, delay=3.0)

    started = time.monotonic()
    response = client.get(OVERVIEW, headers=bearer)
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    body = json_of(response)
    assert (body["complete"], body["missing"]) == (False, ["payments"])
    assert body["user"] == USER
    assert body["orders"] == ORDERS_PAGE["results"]  # the orders' own payment summaries stay
    assert elapsed < 2.0  # the 0.5 s timeout, not the payment service's 3 s


@pytest.mark.usefixtures("composed")
def test_an_unreachable_user_service_leaves_the_rest(client: Client, bearer: dict[str, str], settings: Any) -> None:
    settings.UPSTREAMS = {**settings.UPSTREAMS, "users": closed_port_url()}

    body = json_of(client.get(OVERVIEW, headers=bearer))

    assert (body["user"], body["complete"], body["missing"]) == (None, False, ["user"])
    assert body["orders"][0]["payment"] == PAYMENT


@pytest.mark.usefixtures("composed")
@pytest.mark.parametrize("failure", [{"status": 500}, {"status": 200, "body": b"not json"}])
def test_failing_orders_are_named_and_no_payment_is_asked_for(
    client: Client, orders: StubUpstream, payments: StubUpstream, bearer: dict[str, str], failure: dict[str, Any]
) -> None:
    orders.reply("/api/v1/orders/", **failure)

    response = client.get(OVERVIEW, headers=bearer)

    assert response.status_code == 200
    body = json_of(response)
    assert (body["user"], body["orders"], body["complete"], body["missing"]) == (USER, None, False, ["orders"])
    assert payments.received == []


@pytest.mark.usefixtures("composed")
def test_nothing_at_all_is_503_naming_every_part(client: Client, bearer: dict[str, str], settings: Any) -> None:
    settings.UPSTREAMS = {**settings.UPSTREAMS, "users": closed_port_url(), "orders": closed_port_url()}

    response = client.get(OVERVIEW, headers=bearer)

    assert response.status_code == 503
    assert json_of(response)["error"]["code"] == "upstream_unavailable"
    assert sorted(json_of(response)["error"]["details"]["missing"]) == ["orders", "user"]


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "not_authenticated"), ({"Authorization": "Bearer not.a.token"}, "malformed_token")],
)
def test_the_overview_requires_a_valid_token(
    client: Client, stubs: dict[str, StubUpstream], headers: dict[str, str], code: str
) -> None:
    response = client.get(OVERVIEW, headers=headers)

    assert response.status_code == 401
    assert json_of(response)["error"]["code"] == code
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert all(not stub.received for stub in stubs.values())


def test_the_overview_is_read_only(client: Client, bearer: dict[str, str]) -> None:
    response = client.post(OVERVIEW, headers=bearer)

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


# /api/schema/ and /api/docs/


def operation(responses_ref: str | None = None, tags: tuple[str, ...] = ()) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": responses_ref}}} if responses_ref else {}
    return {
        "operationId": "op",
        "tags": list(tags),
        "security": [{"ServiceAssertion": []}],
        "responses": {"200": {"description": "", "content": content}},
    }


def openapi(paths: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "svc", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"ServiceAssertion": {"type": "apiKey", "in": "header", "name": "X-Service-Assertion"}},
        },
    }


ERROR = {"type": "object", "properties": {"error": {"type": "object"}}}
SERVICE_SCHEMAS = {
    "users": openapi(
        {
            "/api/v1/auth/token": {"post": operation(tags=("auth",))},
            "/api/v1/users/{id}/": {"get": operation("#/components/schemas/User", ("users",))},
            "/health/": {"get": operation()},
        },
        {"User": {"type": "object"}, "Error": ERROR},
    ),
    "orders": openapi(
        {
            "/api/v1/products/": {"get": operation("#/components/schemas/Error", ("products",))},
            "/api/v2/products/": {"get": operation(tags=("products",))},
            "/api/v1/orders/": {
                "get": operation(),
                "post": {
                    **operation(),
                    "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                    "responses": {"201": {"description": ""}, "429": {"description": "the service's own words"}},
                },
            },
        },
        {"Error": {"type": "string"}},  # the same name as the user service's, another shape
    ),
    "payments": openapi(
        {
            "/api/v1/payments/": {
                "get": {**operation(), "x-internal": True},  # the order service's reconciliation: not public
                "post": operation(),  # the order service's charge: not forwarded
            },
            "/api/v1/payments/{payment_id}/": {"get": operation()},
            "/api/v1/payments/{payment_id}/refund": {"post": operation()},
        },
        {},
    ),
}


@pytest.fixture
def schemas(stubs: dict[str, StubUpstream]) -> Iterator[None]:
    docs.clear_cache()
    for name, stub in stubs.items():
        reply_json(stub, f"/api/schema/{name}/", SERVICE_SCHEMAS[name])
    yield
    docs.clear_cache()


@pytest.mark.usefixtures("schemas")
def test_the_public_schema_has_exactly_the_forwarded_paths_with_bearer_auth(client: Client) -> None:
    response = client.get("/api/schema/")

    assert response.status_code == 200
    document = json_of(response)
    assert {path: sorted(item) for path, item in document["paths"].items()} == {
        "/api/v1/auth/token": ["post"],
        "/api/v1/me/overview": ["get"],
        "/api/v1/orders/": ["get", "post"],
        "/api/v1/products/": ["get"],
        "/api/v1/users/{id}/": ["get"],
        "/api/v2/products/": ["get"],
        "/api/v1/payments/{payment_id}/": ["get"],
    }
    assert document["components"]["securitySchemes"] == {
        "BearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token from POST /api/v1/auth/token (EdDSA JWT, minutes long).",
        }
    }
    assert "ServiceAssertion" not in body_of(response).decode()
    assert document["paths"]["/api/v1/orders/"]["post"]["security"] == [{"BearerAuth": []}]
    assert document["paths"]["/api/v1/users/{id}/"]["get"]["security"] == [{"BearerAuth": []}, {}]
    assert document["paths"]["/api/v1/products/"]["get"]["deprecated"] is True
    assert "deprecated" not in document["paths"]["/api/v2/products/"]["get"]


@pytest.mark.usefixtures("schemas")
def test_each_public_operation_lists_the_errors_the_gateway_answers_itself(client: Client) -> None:
    paths = json_of(client.get("/api/schema/"))["paths"]

    def statuses(path: str, method: str) -> list[str]:
        return sorted(paths[path][method]["responses"])

    # a route that takes a token, with a body: 401 and 413 too; what the service documented stays its own
    assert statuses("/api/v1/orders/", "post") == ["201", "401", "413", "414", "429", "502", "503", "504"]
    assert paths["/api/v1/orders/"]["post"]["responses"]["429"] == {"description": "the service's own words"}
    # a route with an optional token (an invalid one is still a 401), without a body or a path parameter
    assert statuses("/api/v2/products/", "get") == ["200", "401", "414", "429", "502", "503", "504"]
    # a path parameter the path hygiene may refuse
    assert "400" in statuses("/api/v1/payments/{payment_id}/", "get")
    limited = paths["/api/v2/products/"]["get"]["responses"]["429"]
    assert limited["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "Retry-After" in limited["headers"]


@pytest.mark.usefixtures("schemas")
def test_clashing_component_names_are_kept_apart(client: Client) -> None:
    document = json_of(client.get("/api/schema/"))

    assert document["components"]["schemas"]["Error"] == ERROR
    assert document["components"]["schemas"]["OrdersError"] == {"type": "string"}
    products = document["paths"]["/api/v1/products/"]["get"]["responses"]["200"]["content"]["application/json"]
    assert products["schema"] == {"$ref": "#/components/schemas/OrdersError"}


@pytest.mark.usefixtures("schemas")
def test_schemas_are_cached_and_a_service_down_keeps_its_last_good_copy(
    client: Client, stubs: dict[str, StubUpstream], settings: Any
) -> None:
    client.get("/api/schema/")
    client.get("/api/schema/")
    assert [len(stub.received) for stub in stubs.values()] == [1, 1, 1]

    settings.DOCS_SCHEMA_CACHE_SECONDS = 0
    stubs["payments"].reply("/api/schema/payments/", status=503)
    document = json_of(client.get("/api/schema/"))

    assert "/api/v1/payments/{payment_id}/" in document["paths"]
    assert "Not shown" not in document["info"]["description"]


@pytest.mark.usefixtures("schemas")
def test_a_service_never_reached_is_named_and_the_rest_is_documented(client: Client, settings: Any) -> None:
    settings.UPSTREAMS = {**settings.UPSTREAMS, "payments": closed_port_url()}

    document = json_of(client.get("/api/schema/"))

    assert "/api/v1/orders/" in document["paths"]
    assert not any(path.startswith("/api/v1/payments/") for path in document["paths"])
    assert "payments" in document["info"]["description"]


def test_no_schema_at_all_is_503(client: Client, settings: Any) -> None:
    docs.clear_cache()
    settings.UPSTREAMS = {name: closed_port_url() for name in settings.UPSTREAMS}

    response = client.get("/api/schema/")

    assert response.status_code == 503
    assert json_of(response)["error"]["details"] == {"missing": ["users", "orders", "payments"]}


def test_the_docs_page_uses_only_the_gateways_own_assets(client: Client) -> None:
    page = client.get("/api/docs/")

    assert page.status_code == 200
    html = page.content.decode()
    assert "/api/schema/" in html
    assets = [
        "/static/gateway/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js",
        "/static/gateway/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css",
    ]
    for asset in assets:
        assert asset in html
        assert client.get(asset).status_code == 200
    assert "http://" not in html
    assert "https://" not in html


@pytest.mark.parametrize("service", ["users", "orders", "payments"])
def test_the_old_per_service_docs_lead_to_the_public_page(
    client: Client, stubs: dict[str, StubUpstream], service: str
) -> None:
    response = client.get(f"/api/docs/{service}/")

    assert response.status_code == 302
    assert response["Location"] == "/api/docs/"
    assert all(not stub.received for stub in stubs.values())


# /metrics


def metrics_text(client: Client, **extra: Any) -> tuple[int, str]:
    response = client.get("/metrics", **extra)
    return response.status_code, response.content.decode()


def test_metrics_are_served_to_loopback_in_prometheus_format(client: Client) -> None:
    body_of(client.get("/api/v1/products/"))  # a streamed answer is counted once the client has it all

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    assert 'gateway_requests_total{method="GET",route="/api/v1/products/",status="200"}' in text
    assert 'gateway_request_duration_seconds_bucket{le="0.005",route="/api/v1/products/"}' in text
    assert 'gateway_breaker_state{service="orders",state="closed"} 1.0' in text


@pytest.mark.parametrize("address", ["203.0.113.9", "10.0.0.1", "::2", "not-an-address"])
def test_metrics_from_outside_the_allowed_networks_are_not_found(client: Client, address: str) -> None:
    status, text = metrics_text(client, REMOTE_ADDR=address)

    assert status == 404
    assert json.loads(text)["error"]["code"] == "not_found"


def test_the_allowed_networks_are_configurable(client: Client, settings: Any) -> None:
    settings.METRICS_ALLOWED_NETWORKS = ["203.0.113.0/24"]

    assert metrics_text(client, REMOTE_ADDR="203.0.113.9")[0] == 200
    assert metrics_text(client, REMOTE_ADDR="::ffff:203.0.113.9")[0] == 200
    assert metrics_text(client, REMOTE_ADDR="127.0.0.1")[0] == 404


def test_upstream_errors_and_rate_limits_are_counted(
    client: Client, bearer: dict[str, str], orders: StubUpstream, settings: Any
) -> None:
    def value(text: str, sample: str) -> float:
        line = next((line for line in text.splitlines() if line.startswith(sample + " ")), None)
        return float(line.split()[-1]) if line else 0.0

    unavailable = 'gateway_upstream_errors_total{code="upstream_unavailable",service="payments"}'
    own_5xx = 'gateway_upstream_errors_total{code="status_5xx",service="orders"}'
    limited = 'gateway_rate_limited_total{route="/api/v1/orders/"}'
    before = metrics_text(client)[1]
    settings.UPSTREAMS = {**settings.UPSTREAMS, "payments": closed_port_url()}
    orders.reply("/api/v1/orders/1/", status=500)
    orders.reply("/api/v1/orders/2/", status=429)

    for path, status in (("/api/v1/payments/1/", 503), ("/api/v1/orders/1/", 500), ("/api/v1/orders/2/", 429)):
        response = client.get(path, headers=bearer)
        body_of(response)  # a streamed answer is counted once the client has it all
        assert response.status_code == status

    after = metrics_text(client)[1]
    assert value(after, unavailable) - value(before, unavailable) == 1
    assert value(after, own_5xx) - value(before, own_5xx) == 1
    assert value(after, limited) - value(before, limited) == 1
