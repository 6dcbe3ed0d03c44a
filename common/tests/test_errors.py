"""Every error, whoever raises it, reaches the client as ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.test import Client
from rest_framework import exceptions
from rest_framework.test import APIClient

from common import errors
from common.testing import assertion_headers


def handle(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    response = errors.drf_exception_handler(exc, {})
    assert response is not None
    return response.status_code, response.data, dict(response.items())


@pytest.mark.parametrize(
    ("exc", "status", "code", "message"),
    [
        (errors.ApplicationError(), 400, "bad_request", "The request could not be processed."),
        (errors.NotFound(), 404, "not_found", "Not found."),
        (errors.Conflict("Already paid."), 409, "conflict", "Already paid."),
        (errors.PermissionDenied(), 403, "permission_denied", "You do not have permission to perform this action."),
        (errors.UpstreamUnavailable(), 503, "upstream_unavailable", errors.UpstreamUnavailable.message),
        (errors.UpstreamTimeout(), 504, "upstream_timeout", errors.UpstreamTimeout.message),
        (errors.UpstreamError(code="payment_declined"), 502, "payment_declined", errors.UpstreamError.message),
    ],
)
def test_application_errors_render_their_status_code_and_message(
    exc: errors.ApplicationError, status: int, code: str, message: str
) -> None:
    assert handle(exc)[:2] == (status, {"error": {"code": code, "message": message, "details": {}}})


def test_application_error_details_are_passed_through() -> None:
    exc = errors.Conflict("Out of stock.", code="out_of_stock", details={"product_id": 4, "available": 0})

    status, body, _ = handle(exc)

    assert status == 409
    assert body == {
        "error": {"code": "out_of_stock", "message": "Out of stock.", "details": {"product_id": 4, "available": 0}}
    }


def test_validation_error_with_field_errors_lists_them_as_details() -> None:
    exc = exceptions.ValidationError({"email": ["This field is required."], "quantity": ["Must be positive."]})

    status, body, _ = handle(exc)

    assert status == 400
    assert body == {
        "error": {
            "code": "validation_error",
            "message": "The request has invalid fields.",
            "details": {"email": ["This field is required."], "quantity": ["Must be positive."]},
        }
    }


@pytest.mark.parametrize("detail", [["The basket is empty."], "The basket is empty."])
def test_validation_error_without_fields_lists_them_as_non_field_errors(detail: Any) -> None:
    status, body, _ = handle(exceptions.ValidationError(detail))

    assert status == 400
    assert body["error"]["code"] == "validation_error"
    assert body["error"]["details"] == {"non_field_errors": ["The basket is empty."]}


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (exceptions.ParseError(), 400, "malformed_request"),
        (exceptions.NotAuthenticated(), 401, "not_authenticated"),
        (exceptions.AuthenticationFailed(), 401, "authentication_failed"),
        (exceptions.PermissionDenied(), 403, "permission_denied"),
        (exceptions.NotFound(), 404, "not_found"),
        (exceptions.MethodNotAllowed("PATCH"), 405, "method_not_allowed"),
        (exceptions.NotAcceptable(), 406, "not_acceptable"),
        (exceptions.UnsupportedMediaType("text/xml"), 415, "unsupported_media_type"),
        (exceptions.Throttled(), 429, "rate_limited"),
    ],
)
def test_drf_exceptions_get_stable_codes(exc: exceptions.APIException, status: int, code: str) -> None:
    got_status, body, _ = handle(exc)

    assert got_status == status
    assert body == {"error": {"code": code, "message": str(exc.detail), "details": {}}}


def test_a_code_given_where_the_exception_was_raised_wins() -> None:
    exc = exceptions.AuthenticationFailed("Use the gateway.", code="gateway_required")

    assert handle(exc)[:2] == (
        401,
        {"error": {"code": "gateway_required", "message": "Use the gateway.", "details": {}}},
    )


def test_throttled_keeps_retry_after() -> None:
    status, body, headers = handle(exceptions.Throttled(wait=30))

    assert status == 429
    assert body["error"]["code"] == "rate_limited"
    assert headers["Retry-After"] == "30"


def test_unexpected_exceptions_are_left_to_djangos_500_handler() -> None:
    assert errors.drf_exception_handler(RuntimeError("a bug"), {}) is None


def test_application_error_raised_in_a_view(api_client: APIClient) -> None:
    response = api_client.get("/api/fail/conflict/", headers=assertion_headers())

    assert response.status_code == 409
    assert response.json() == {
        "error": {"code": "order_paid", "message": "The order is already paid.", "details": {"order_id": 3}}
    }


def test_djangos_http404_raised_in_a_view_is_a_not_found_error(api_client: APIClient) -> None:
    # As get_object_or_404 (and DRF's generic views) raise it.
    response = api_client.get("/api/fail/django-404/", headers=assertion_headers())

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_throttled_view_is_rate_limited_with_retry_after(api_client: APIClient) -> None:
    response = api_client.get("/api/fail/throttled/", headers=assertion_headers())

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert response["Retry-After"] == "30"


def test_invalid_input_is_a_validation_error_listing_the_fields(api_client: APIClient) -> None:
    response = api_client.post(
        "/api/items/", {"name": "too long a name", "quantity": 0}, format="json", headers=assertion_headers()
    )

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "validation_error",
            "message": "The request has invalid fields.",
            "details": {
                "name": ["Ensure this field has no more than 5 characters."],
                "quantity": ["Ensure this value is greater than or equal to 1."],
            },
        }
    }


def test_malformed_json_is_a_malformed_request(api_client: APIClient) -> None:
    response = api_client.generic(
        "POST", "/api/items/", '{"name": "mug", ', content_type="application/json", headers=assertion_headers()
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_request"


def test_unsupported_method_is_method_not_allowed(api_client: APIClient) -> None:
    response = api_client.patch("/api/items/", {}, format="json", headers=assertion_headers())

    assert response.status_code == 405
    assert response.json()["error"] == {
        "code": "method_not_allowed",
        "message": 'Method "PATCH" not allowed.',
        "details": {},
    }


def test_unknown_url_renders_the_json_404(client: Client) -> None:
    response = client.get("/no/such/path/", headers={"X-Request-ID": "req-404-check"})

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": {"code": "not_found", "message": "No such resource.", "details": {}}}
    assert response["X-Request-ID"] == "req-404-check"


@pytest.mark.parametrize("path", ["/crash/", "/api/fail/crash/"])
def test_a_crash_renders_the_json_500_with_the_request_id(path: str) -> None:
    client = Client(raise_request_exception=False)

    response = client.get(path, headers={"X-Request-ID": "req-500-check", **assertion_headers()})

    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "Something went wrong on our side; it has been logged.",
            "details": {},
        }
    }
    assert response["X-Request-ID"] == "req-500-check"


def test_django_handlers_for_400_and_403_render_json(rf: Any) -> None:
    request = rf.get("/")

    bad, forbidden = errors.handler400(request), errors.handler403(request)

    assert (bad.status_code, forbidden.status_code) == (400, 403)
    assert b'"code": "bad_request"' in bad.content
    assert b'"code": "permission_denied"' in forbidden.content


def test_djangos_own_not_found_and_permission_denied_get_stable_codes() -> None:
    assert handle(Http404("No Order matches the given query."))[:2] == (
        404,
        {"error": {"code": "not_found", "message": "No Order matches the given query.", "details": {}}},
    )
    assert handle(PermissionDenied())[:2] == (
        403,
        {
            "error": {
                "code": "permission_denied",
                "message": str(exceptions.PermissionDenied.default_detail),
                "details": {},
            }
        },
    )
