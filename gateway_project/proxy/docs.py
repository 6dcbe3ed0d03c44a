"""One OpenAPI document and one Swagger UI for the public API: ``/api/schema/`` and ``/api/docs/``.

Each service publishes its own schema (drf-spectacular, ``/api/schema/<service>/``), written for callers
that hold a service assertion and listing every path it serves, including internal ones (the payment
service's charge, which only the order service may call). The public document is made from them here:
fetched from each service directly (timeout ``DOCS_SCHEMA_TIMEOUT``), cached for
``DOCS_SCHEMA_CACHE_SECONDS`` and kept as the last good copy when a service cannot be reached; only the
paths and methods the public route table forwards are kept, less the operations a service marks as for
other services only (``x-internal``, common.schema); each operation also lists the errors the gateway itself
answers (:data:`GATEWAY_ERRORS`: a bad token, a body over the limit, the rate limit, an unreachable or
failing service) in the same envelope as the services' own; the security is the client's Bearer JWT
(required or optional as the route says), never the internal ``X-Service-Assertion``; the operations of a
deprecated route are marked ``deprecated``; the gateway's own ``/api/v1/me/overview`` is added.

The Swagger UI page uses the assets bundled in drf-spectacular-sidecar, served by the gateway itself: no
CDN, so it works offline. The services' own docs pages stay reachable on their ports for their developers;
through the gateway, ``/api/docs/<service>/`` now leads to the one public page.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import render

from common.errors import ApplicationError, error_response
from common.request_id import HEADER as REQUEST_ID_HEADER
from common.request_id import get_request_id
from common.schema import INTERNAL_EXTENSION
from proxy import upstream
from proxy.routes import SERVICES, Route, UpstreamPolicy, match_route

logger = logging.getLogger(__name__)

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
BEARER = "BearerAuth"
MAX_SCHEMA_BYTES = 4 * 1024 * 1024

# The errors the gateway answers itself, by when they apply: (status, when, description). "auth": the route
# takes a token; "body": the operation has a request body; "path": its path has a parameter, which a client
# can fill with what the path hygiene refuses (proxy/middleware.py); "always": any request. Every one is the
# shared envelope (#/components/schemas/Error, which the services publish).
GATEWAY_ERRORS = (
    (
        400,
        "path",
        "The path is ambiguous or malformed: dot segments, encoded slashes, control characters, ... (invalid_path).",
    ),
    (
        401,
        "auth",
        "The access token is missing where required, or invalid: not_authenticated, token_expired, "
        "invalid_token, invalid_signature, unknown_key, ...",
    ),
    (413, "body", "The body is over the route's limit (payload_too_large)."),
    (414, "always", "The request line (path and query) is over the limit (uri_too_long)."),
    (429, "always", "Over the route's rate limit (rate_limited); wait for Retry-After seconds."),
    (502, "always", "The service's answer could not be used (upstream_error)."),
    (503, "always", "The service is unreachable or its circuit is open (upstream_unavailable); see Retry-After."),
    (504, "always", "The service did not answer in time (upstream_timeout)."),
)
ERROR_REF = {"$ref": "#/components/schemas/Error"}
# The envelope, for a document none of whose services could be fetched (they publish it otherwise).
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object", "additionalProperties": {}},
                "request_id": {"type": "string"},
                "trace_id": {"type": "string"},
            },
            "required": ["code", "message", "details"],
        }
    },
    "required": ["error"],
}

_lock = threading.Lock()
_last_good: dict[str, tuple[float, dict[str, Any]]] = {}  # service -> (fetched at, schema)


def _fetch(service: str) -> dict[str, Any]:
    timeout = settings.DOCS_SCHEMA_TIMEOUT
    policy = UpstreamPolicy(connect_timeout=timeout, read_timeout=timeout, deadline=timeout, retries=0)
    status, content = upstream.fetch(
        service,
        f"/api/schema/{service}/?format=json",
        headers={"Accept": "application/json", REQUEST_ID_HEADER: get_request_id()},
        policy=policy,
        max_bytes=MAX_SCHEMA_BYTES + 1,
    )
    if status != 200 or len(content) > MAX_SCHEMA_BYTES:
        raise ValueError(f"HTTP {status}")
    schema = json.loads(content)
    if not isinstance(schema, dict) or not isinstance(schema.get("paths"), dict):
        raise ValueError("not an OpenAPI document")
    return schema


def service_schemas() -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each service's schema (fresh, cached or last good) and the services none could be had for."""
    now = time.monotonic()
    schemas: dict[str, dict[str, Any]] = {}
    stale: list[str] = []
    with _lock:
        for service in SERVICES:
            cached = _last_good.get(service)
            if cached and now - cached[0] < settings.DOCS_SCHEMA_CACHE_SECONDS:
                schemas[service] = cached[1]
            else:
                stale.append(service)
    if stale:
        request_id = get_request_id()

        def fetch(service: str) -> dict[str, Any] | None:
            from common.request_id import reset_request_id, set_request_id

            token = set_request_id(request_id)  # executor threads do not see the request's context
            try:
                return _fetch(service)
            except (ApplicationError, ValueError, OSError) as exc:
                logger.warning("docs: the %s schema could not be fetched: %s", service, exc)
                return None
            finally:
                reset_request_id(token)

        with ThreadPoolExecutor(max_workers=len(stale), thread_name_prefix="docs") as executor:
            fetched = dict(zip(stale, executor.map(fetch, stale), strict=True))
        with _lock:
            for service, schema in fetched.items():
                if schema is not None:
                    _last_good[service] = (time.monotonic(), schema)
                if service in _last_good:
                    schemas[service] = _last_good[service][1]
    missing = [service for service in SERVICES if service not in schemas]
    return schemas, missing


def clear_cache() -> None:
    with _lock:
        _last_good.clear()


def _rename_refs(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        result = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/components/schemas/"):
                name = value.removeprefix("#/components/schemas/")
                result[key] = f"#/components/schemas/{renames.get(name, name)}"
            else:
                result[key] = _rename_refs(value, renames)
        return result
    if isinstance(node, list):
        return [_rename_refs(item, renames) for item in node]
    return node


def _security(route: Route) -> list[dict[str, list[str]]]:
    if route.auth == "required":
        return [{BEARER: []}]
    return [{BEARER: []}, {}]  # optional: a token identifies the caller, none is anonymous


def _add_gateway_errors(operation: dict[str, Any], path: str, route: Route) -> None:
    """The gateway's own errors (:data:`GATEWAY_ERRORS`), where the service did not document that status."""
    responses = operation.setdefault("responses", {})
    for status, when, description in GATEWAY_ERRORS:
        if when == "auth" and route.auth == "none":
            continue
        if when == "body" and "requestBody" not in operation:
            continue
        if when == "path" and "{" not in path:
            continue
        response = _error_answer(description)
        if status in (429, 503):
            response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
        responses.setdefault(str(status), response)
    operation["responses"] = dict(sorted(responses.items()))


def _error_answer(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def public_schema(schemas: dict[str, dict[str, Any]], missing: list[str]) -> dict[str, Any]:
    """The public document made of the services' schemas (see the module's docstring)."""
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {}
    tags: dict[str, dict[str, Any]] = {}
    for service, original in schemas.items():
        schema = copy.deepcopy(original)
        own = schema.get("components", {}).get("schemas", {})
        # A name another service already uses for something else gets the service's prefix.
        renames = {
            name: f"{service.title()}{name}" for name, value in own.items() if components.get(name, value) != value
        }
        schema = _rename_refs(schema, renames)
        for name, value in schema.get("components", {}).get("schemas", {}).items():
            components[renames.get(name, name)] = value
        for path, item in schema["paths"].items():
            route = match_route(path)
            if route is None or route.kind != "api" or route.service != service:
                continue  # not forwarded to this service: internal, or someone else's path
            operations = {}
            for method, operation in item.items():
                if method not in HTTP_METHODS:
                    operations[method] = operation  # path-level parameters, summary
                    continue
                if method.upper() not in route.methods or operation.get(INTERNAL_EXTENSION):
                    continue
                operation["security"] = _security(route)
                _add_gateway_errors(operation, path, route)
                if route.deprecation is not None:
                    operation["deprecated"] = True
                for tag in operation.get("tags", []):
                    tags.setdefault(tag, {"name": tag})
                operations[method] = operation
            if any(method in HTTP_METHODS for method in operations):
                paths[path] = operations
    paths["/api/v1/me/overview"] = _overview_path()
    components.setdefault("Error", ERROR_SCHEMA)
    tags.setdefault("me", {"name": "me"})
    description = (
        "The shop's public API, through the gateway. Authenticate with the access token from "
        "`POST /api/v1/auth/token`: `Authorization: Bearer <access>`."
    )
    if missing:
        description += f"\n\nNot shown for now (service unreachable): {', '.join(missing)}."
    return {
        "openapi": "3.0.3",
        "info": {"title": "Shop API", "version": "1", "description": description},
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "tags": sorted(tags.values(), key=lambda tag: tag["name"]),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from POST /api/v1/auth/token (EdDSA JWT, minutes long).",
                }
            },
        },
    }


def _overview_path() -> dict[str, Any]:
    part = {"type": "object", "nullable": True, "additionalProperties": True}
    return {
        "get": {
            "operationId": "me_overview",
            "tags": ["me"],
            "summary": "The caller, their recent orders and each order's payment",
            "description": "Composed by the gateway from the three services in parallel. A part a service "
            "could not give is null (or, for payments, the order's own summary) and named in `missing`; "
            "`complete` is false then.",
            "security": [{BEARER: []}],
            "responses": {
                "200": {
                    "description": "The overview",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "user": part,
                                    "orders": {"type": "array", "nullable": True, "items": part},
                                    "complete": {"type": "boolean"},
                                    "missing": {
                                        "type": "array",
                                        "items": {"type": "string", "enum": ["user", "orders", "payments"]},
                                    },
                                },
                                "required": ["user", "orders", "complete", "missing"],
                            }
                        }
                    },
                },
                "401": _error_answer("No or an invalid access token (not_authenticated, token_expired, ...)."),
                "429": _error_answer("Over the rate limit (rate_limited); wait for Retry-After seconds."),
                "503": _error_answer("No service could give any part (upstream_unavailable)."),
            },
        }
    }


def _get_only(request: HttpRequest, label: str) -> HttpResponseBase | None:
    request.gateway_route_label = label  # type: ignore[attr-defined]
    if request.method not in ("GET", "HEAD"):
        response = error_response(405, "method_not_allowed", "This method is not allowed on this path.")
        response["Allow"] = "GET, HEAD"
        return response
    return None


def schema_view(request: HttpRequest) -> HttpResponseBase:
    refused = _get_only(request, "/api/schema/")
    if refused is not None:
        return refused
    schemas, missing = service_schemas()
    if not schemas:
        message = "No service's schema could be fetched."
        return error_response(503, "upstream_unavailable", message, {"missing": missing})
    response = JsonResponse(public_schema(schemas, missing), json_dumps_params={"indent": None})
    response["Cache-Control"] = "no-cache"
    return response


def docs_view(request: HttpRequest) -> HttpResponseBase:
    refused = _get_only(request, "/api/docs/")
    if refused is not None:
        return refused
    response: HttpResponse = render(request, "proxy/swagger_ui.html", {"schema_url": "/api/schema/"})
    return response
