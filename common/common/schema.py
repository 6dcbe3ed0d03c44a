"""How the services' OpenAPI schemas describe what every API call shares: the service assertion it carries
and the error envelope of every refusal. Importing this module registers the assertion's description with
drf-spectacular (the common app does it on start); ``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]`` names
:class:`AutoSchema`.

A client generated from a schema that lists only the 200 cannot tell a validation error from an outage,
and a fuzzer (schemathesis, in the end-to-end suite) reports every undocumented status as a defect. So
each operation lists the errors :func:`common.errors.drf_exception_handler` gives it, worked out from the
view: 400 and 415 for a request body, 401 unless anyone may call it, 403 for a permission beyond sign-in,
404 for a path with an id or a paginated list, 409 and 422 for an ``Idempotency-Key``. What a view
documents itself (``@extend_schema(responses=...)``) is kept as written.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny, IsAuthenticated

from common.idempotency import IdempotentPostMixin
from common.internal_auth import HEADER, IsCallerService, IsEndUser

# Operations only other services may call (IsCallerService). The gateway leaves them out of the public
# document: a client could only ever be refused there.
INTERNAL_EXTENSION = "x-internal"
# Permissions that only ask for a signed-in caller: their refusal is the 401, never a 403.
_SIGN_IN_ONLY = (AllowAny, IsAuthenticated, IsEndUser)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class ServiceAssertionScheme(OpenApiAuthenticationExtension):
    target_class = "common.internal_auth.ServiceAssertionAuthentication"
    name = "ServiceAssertion"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": HEADER,
            "description": "Short-lived HS256 JWT minted by the gateway (or a calling service) for this service; "
            "clients authenticate at the gateway with their access token instead.",
        }


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable and machine-readable, e.g. validation_error, not_found.")
    message = serializers.CharField(help_text="For people; may change.")
    details = serializers.DictField(help_text="Per code: e.g. each invalid field and its messages.")
    request_id = serializers.CharField(required=False, help_text="The X-Request-ID of the request.")
    trace_id = serializers.CharField(required=False, help_text="The request's trace, for support.")


class ErrorSerializer(serializers.Serializer):
    """The envelope of every error answer (common.errors.error_body)."""

    error = ErrorDetailSerializer()


def error_response(description: str) -> OpenApiResponse:
    """An error answer for ``@extend_schema(responses=...)``, in the shared envelope."""
    return OpenApiResponse(ErrorSerializer, description=description)


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's schema, with the error answers of each operation (see the module docstring)."""

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is not None and any(isinstance(each, IsCallerService) for each in self.view.get_permissions()):
            operation[INTERNAL_EXTENSION] = True
        return operation

    def _map_serializer_field(self, field: Any, direction: str, bypass_extensions: bool = False) -> Any:
        # drf-spectacular leaves out a nested list's bounds (many=True, allow_empty, min/max_length), so an
        # empty or over-long list would pass for valid in the document while the serializer refuses it.
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if isinstance(field, serializers.ListSerializer) and isinstance(schema, dict) and schema.get("type") == "array":
            min_items = max(field.min_length or 0, 0 if field.allow_empty else 1)
            if min_items:
                schema["minItems"] = min_items
            if field.max_length is not None:
                schema["maxItems"] = field.max_length
        return schema

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:  # type: ignore[override]
        responses: dict[str, Any] = super()._get_response_bodies(direction)  # type: ignore[arg-type]
        for status, description in self._error_answers():
            if str(status) not in responses:
                responses[str(status)] = self._get_response_for_code(
                    error_response(description), str(status), direction=direction
                )
        return dict(sorted(responses.items()))

    def _error_answers(self) -> list[tuple[int, str]]:
        answers: list[tuple[int, str]] = []
        permissions = self.view.get_permissions()
        if self.method in _BODY_METHODS and self.get_request_serializer() is not None:
            answers.append((400, "Invalid fields (validation_error): details maps each field to its messages."))
            answers.append((415, "The body is not JSON (unsupported_media_type)."))
        if not all(isinstance(each, AllowAny) for each in permissions):
            answers.append((401, "No signed-in user (not_authenticated)."))
        if any(not isinstance(each, _SIGN_IN_ONLY) for each in permissions):
            answers.append((403, "The caller may not do this (permission_denied)."))
        paginated = self.method == "GET" and getattr(self.view, "pagination_class", None) is not None
        if "{" in self.path or paginated:
            answers.append((404, "No such resource, or no such page (not_found)."))
        if self.method == "POST" and isinstance(self.view, IdempotentPostMixin):
            answers.append((409, "A request with this Idempotency-Key is still running (idempotency_key_in_use)."))
            answers.append((422, "This Idempotency-Key was used for a different request (idempotency_key_reused)."))
        return answers
