"""``/config/<service>/<profile>/`` (and the same under ``/admin/config/``, where the admin's session and
CSRF cookies are sent): the REST face of the config center, served by the gateway itself.

It is not in the route table (proxy/routes.py), so nothing forwards it, and clients cannot use it: a
read needs either the internal service assertion (``X-Service-Assertion`` for audience ``gateway``, minted
with INTERNAL_AUTH_SECRET, which clients never hold) naming the service whose configuration it reads, or a
staff session of the gateway's admin; a write (PUT) needs a staff session (CSRF-checked), whose user is
recorded as the author. Every answer carries the version's ETag; ``If-None-Match`` with it gives 304.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.errors import drf_exception_handler
from common.internal_auth import HEADER, Principal, ServiceAssertionAuthentication
from configcenter.models import ConfigVersion
from configcenter.schema import InvalidConfig, check_scope
from configcenter.selectors import current_version
from configcenter.services import VersionConflict, save_version


class OptionalServiceAssertion(ServiceAssertionAuthentication):
    """The assertion when the request carries one (then it must be valid), else the next authenticator."""

    def authenticate(self, request: Request) -> tuple[Principal, Principal] | None:  # type: ignore[override]
        if not request.headers.get(HEADER):
            return None
        return super().authenticate(request)


class CanAccessConfig(BasePermission):
    message = "A service may only read its own configuration; changes need a staff session."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if isinstance(user, Principal):  # a service (its assertion names no end user)
            return request.method in ("GET", "HEAD") and user.caller == view.kwargs["service"]
        if user is None or not getattr(user, "is_authenticated", False):
            raise exceptions.NotAuthenticated()
        return bool(user.is_staff)


def _body(found: ConfigVersion | None, service: str, profile: str) -> dict[str, Any]:
    if found is None:  # nothing saved yet: every setting keeps its default
        return {"service": service, "profile": profile, "version": 0, "values": {}, "author": "", "created_at": None}
    return {
        "service": found.service,
        "profile": found.profile,
        "version": found.version,
        "values": found.values,
        "author": found.author,
        "comment": found.comment,
        "created_at": found.created_at.isoformat(),
    }


def _etag(found: ConfigVersion | None, service: str, profile: str) -> str:
    return found.etag if found is not None else f'"{service}.{profile}.v0"'


def _matches(header: str, etag: str) -> bool:
    candidates = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in candidates or etag in candidates


class ConfigView(APIView):
    authentication_classes = (OptionalServiceAssertion, SessionAuthentication)
    permission_classes = (CanAccessConfig,)
    renderer_classes = (JSONRenderer,)
    parser_classes = (JSONParser,)

    def get_exception_handler(self) -> Any:
        return drf_exception_handler  # the gateway has no REST_FRAMEWORK settings: its views are not DRF's

    def get(self, request: Request, service: str, profile: str) -> HttpResponse:
        check_scope(service, profile)
        found = current_version(service, profile)
        etag = _etag(found, service, profile)
        if _matches(request.headers.get("If-None-Match", ""), etag):
            response = HttpResponse(status=304)
        else:
            response = Response(_body(found, service, profile))
        response["ETag"] = etag
        response["Cache-Control"] = "private, no-cache"  # always revalidate: the ETag makes that cheap
        return response

    def put(self, request: Request, service: str, profile: str) -> Response:
        data = request.data
        if not isinstance(data, dict) or "values" not in data:
            raise InvalidConfig('The body must be {"values": {...}, "comment": "..."}.')
        expected = None
        if if_match := request.headers.get("If-Match"):
            current = current_version(service, profile)
            if not _matches(if_match, _etag(current, service, profile)):
                raise VersionConflict(details={"current_version": current.version if current else 0})
            expected = current.version if current else 0
        saved = save_version(
            service=service,
            profile=profile,
            values=data["values"],
            author=request.user.get_username(),
            comment=str(data.get("comment", "")),
            expected_version=expected,
        )
        return Response(_body(saved, service, profile), status=201, headers={"ETag": saved.etag})


config_view = ConfigView.as_view()
