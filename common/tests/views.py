"""Views of the test project: what a service's views do with the library (authenticate, check permissions,
raise errors), and nothing else."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.errors import Conflict
from common.internal_auth import IsCallerService
from common.request_id import get_request_id


def principal_data(request: Request) -> dict[str, Any]:
    return {
        "id": request.user.id,
        "is_staff": request.user.is_staff,
        "caller": request.user.caller,
        "request_id": get_request_id(),
    }


class MeApi(APIView):
    """The defaults: a valid assertion acting for a signed-in user."""

    def get(self, request: Request) -> Response:
        return Response(principal_data(request))


class PublicApi(APIView):
    """Anonymous users welcome, but still only through the gateway."""

    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        return Response(principal_data(request))


class InternalApi(APIView):
    permission_classes = [IsCallerService]
    allowed_callers = ("orders",)

    def get(self, request: Request) -> Response:
        return Response(principal_data(request))


class ItemInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=5)
    quantity = serializers.IntegerField(min_value=1)


class ItemsApi(APIView):
    permission_classes = [AllowAny]

    def post(self, request: Request) -> Response:
        serializer = ItemInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response(serializer.validated_data, status=201)


class FailingApi(APIView):
    """Raises what ``kind`` names, as a service's code might."""

    permission_classes = [AllowAny]

    def get(self, request: Request, kind: str) -> Response:
        if kind == "conflict":
            raise Conflict("The order is already paid.", code="order_paid", details={"order_id": 3})
        if kind == "django-404":
            raise Http404("No Order matches the given query.")
        if kind == "throttled":
            raise exceptions.Throttled(wait=30)
        raise RuntimeError("a bug")


def request_id_view(request: HttpRequest) -> JsonResponse:
    """A plain Django view: what the middleware put in place while the request runs."""
    return JsonResponse({"request_id": get_request_id(), "attribute": request.request_id})  # type: ignore[attr-defined]


def crash_view(request: HttpRequest) -> JsonResponse:
    raise RuntimeError("a bug outside DRF")
