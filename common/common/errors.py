"""One error shape for every service and the gateway:
``{"error": {"code": ..., "message": ..., "details": ...}}`` with the right status.

Domain code raises :class:`ApplicationError` subclasses; DRF's exception handler and Django's error
handlers below turn everything, including DRF's own exceptions, into that shape, so views need no
try/except.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_default_handler

from common.request_id import HEADER, get_request_id
from common.tracing import current_trace_id

logger = logging.getLogger(__name__)


class ApplicationError(Exception):
    status_code = 400
    code = "bad_request"
    message = "The request could not be processed."

    def __init__(self, message: str | None = None, *, code: str | None = None, details: Any = None) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.details = details if details is not None else {}
        super().__init__(self.message)


class NotFound(ApplicationError):
    status_code = 404
    code = "not_found"
    message = "Not found."


class Conflict(ApplicationError):
    status_code = 409
    code = "conflict"
    message = "The request conflicts with the current state."


class PermissionDenied(ApplicationError):
    status_code = 403
    code = "permission_denied"
    message = "You do not have permission to perform this action."


class UpstreamUnavailable(ApplicationError):
    status_code = 503
    code = "upstream_unavailable"
    message = "A service this request depends on is unavailable."


class UpstreamTimeout(ApplicationError):
    status_code = 504
    code = "upstream_timeout"
    message = "A service this request depends on did not answer in time."


class UpstreamError(ApplicationError):
    status_code = 502
    code = "upstream_error"
    message = "A service this request depends on answered with an error."


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "details": details if details is not None else {}}
    # What a user quotes to support and what `manage_all.py trace` takes. Only inside a trace (every served
    # request once tracing is configured, see common.tracing): the request id alone is already in the
    # X-Request-ID header of every answer.
    trace_id = current_trace_id()
    if trace_id:
        error["request_id"] = get_request_id()
        error["trace_id"] = trace_id
    return {"error": error}


def error_response(status: int, code: str, message: str, details: Any = None) -> JsonResponse:
    response = JsonResponse(error_body(code, message, details), status=status)
    response[HEADER] = get_request_id()
    return response


# DRF exceptions whose default codes are vague get stable, more telling ones.
_DRF_CODES: dict[type[drf_exceptions.APIException], str] = {
    drf_exceptions.ValidationError: "validation_error",
    drf_exceptions.ParseError: "malformed_request",
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "rate_limited",
}


def drf_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """``REST_FRAMEWORK['EXCEPTION_HANDLER']``."""
    if isinstance(exc, ApplicationError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status_code)

    # DRF's handler answers Django's Http404 (get_object_or_404, generic views) and PermissionDenied by
    # converting them to its own; convert them here too, so the code below sees what it rendered.
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied(*exc.args)

    response = drf_default_handler(exc, context)
    if response is None:
        return None  # unexpected: Django's handler500 renders it and the traceback goes to the log
    assert isinstance(exc, drf_exceptions.APIException)

    code = _DRF_CODES.get(type(exc))
    if isinstance(exc.detail, dict | list):
        details: Any = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        message = "The request has invalid fields."
        code = code or "invalid"
    else:
        details = {}
        message = str(exc.detail)
        raised_code = getattr(exc.detail, "code", None)
        # A code given where the exception was raised, e.g. AuthenticationFailed(code="token_expired"),
        # says more than the class's.
        if isinstance(raised_code, str) and raised_code != exc.default_code:
            code = raised_code
        code = code or str(exc.default_code)
    response.data = error_body(code, message, details)
    return response


# Django-level handlers, for requests that never reach a DRF view (unknown URLs, crashes, CSRF).


def handler400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error_response(400, "bad_request", "The request could not be understood.")


def handler403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error_response(403, "permission_denied", "You do not have permission to perform this action.")


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error_response(404, "not_found", "No such resource.")


def handler500(request: HttpRequest) -> JsonResponse:
    return error_response(500, "internal_error", "Something went wrong on our side; it has been logged.")
