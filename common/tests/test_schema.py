"""common.schema.AutoSchema: every operation of a service's schema lists the error answers its view can give,
in the shared envelope, and operations only other services may call are marked internal."""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.idempotency import IdempotentPostMixin
from common.internal_auth import IsCallerService, IsEndUser
from common.schema import error_response


class ThingSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=20)


class BasketSerializer(serializers.Serializer):
    things = ThingSerializer(many=True, allow_empty=False, max_length=5)


class BasketView(APIView):
    @extend_schema(request=BasketSerializer, responses={201: BasketSerializer})
    def post(self, request: Request) -> Response:
        return Response({}, status=201)


class PublicListView(APIView):
    permission_classes = [AllowAny]
    pagination_class = PageNumberPagination

    @extend_schema(responses=ThingSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response([])


class ThingView(IdempotentPostMixin, APIView):
    permission_classes = [IsEndUser]

    @extend_schema(request=ThingSerializer, responses={201: ThingSerializer, 409: error_response("Its own words.")})
    def post(self, request: Request) -> Response:
        return Response({}, status=201)


class ThingDetailView(APIView):
    @extend_schema(responses=ThingSerializer)
    def get(self, request: Request, thing_id: int) -> Response:
        return Response({})


class InternalView(APIView):
    permission_classes = [IsEndUser, IsCallerService]

    @extend_schema(responses=ThingSerializer)
    def get(self, request: Request) -> Response:
        return Response({})


def document() -> dict[str, Any]:
    patterns = [
        path("public/", PublicListView.as_view()),
        path("things/", ThingView.as_view()),
        path("things/<int:thing_id>/", ThingDetailView.as_view()),
        path("internal/", InternalView.as_view()),
        path("baskets/", BasketView.as_view()),
    ]
    return SchemaGenerator(patterns=patterns).get_schema(request=None, public=True)


def statuses(schema: dict[str, Any], route: str, method: str) -> list[str]:
    return sorted(schema["paths"][route][method]["responses"])


def test_each_operation_lists_the_errors_its_view_can_answer() -> None:
    schema = document()

    # anyone may list; a page past the end is a 404
    assert statuses(schema, "/public/", "get") == ["200", "404"]
    # a body: 400 and 415; signed-in only: 401; an Idempotency-Key: 409 and 422
    assert statuses(schema, "/things/", "post") == ["201", "400", "401", "409", "415", "422"]
    # an id in the path: 404; the default permission (signed in): 401
    assert statuses(schema, "/things/{thing_id}/", "get") == ["200", "401", "404"]
    # a permission beyond signing in: 403
    assert statuses(schema, "/internal/", "get") == ["200", "401", "403"]


def test_a_status_the_view_documents_itself_keeps_its_description() -> None:
    responses = document()["paths"]["/things/"]["post"]["responses"]

    assert responses["409"]["description"] == "Its own words."
    assert responses["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_every_error_is_the_shared_envelope() -> None:
    components = document()["components"]["schemas"]

    assert components["Error"]["required"] == ["error"]
    assert set(components["ErrorDetail"]["required"]) == {"code", "message", "details"}


def test_operations_only_services_may_call_are_marked_internal() -> None:
    paths = document()["paths"]

    assert paths["/internal/"]["get"]["x-internal"] is True
    assert "x-internal" not in paths["/things/"]["post"]


def test_a_nested_list_keeps_its_bounds() -> None:
    things = document()["components"]["schemas"]["Basket"]["properties"]["things"]

    assert (things["type"], things["minItems"], things["maxItems"]) == ("array", 1, 5)
