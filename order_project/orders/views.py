from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.idempotency import HEADER as IDEMPOTENCY_KEY_HEADER
from common.idempotency import IdempotentPostMixin
from common.schema import error_response
from orders.models import IdempotencyKey, Order
from orders.selectors import order_get, order_history, order_list
from orders.serializers import OrderHistoryEntrySerializer, OrderPlaceInputSerializer, OrderSerializer
from orders.services import order_cancel, order_place

SETTLED = (Order.Status.CONFIRMED, Order.Status.CANCELLED)


class OrderPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


def _order_response(order: Order, *, settled_status: int) -> Response:
    """``settled_status`` once the saga is done with the order; 202 while it still works on it in the
    background, with the order's address to poll."""
    return Response(
        OrderSerializer(order).data,
        status=settled_status if order.status in SETTLED else status.HTTP_202_ACCEPTED,
        headers={"Location": f"/api/v1/orders/{order.id}/"},
    )


class OrderListCreateView(IdempotentPostMixin, GenericAPIView):
    # GenericAPIView only for its paginator (and so that the schema shows the paginated shape).
    pagination_class = OrderPagination
    serializer_class = OrderSerializer
    idempotency_model = IdempotencyKey

    def idempotency_scope(self, request: Request) -> str:
        return f"user:{request.user.id}"  # keys are the end user's: two users may pick the same one

    @extend_schema(responses=OrderSerializer(many=True), operation_id="orders_list")
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(order_list(user_id=request.user.id))
        return self.get_paginated_response(OrderSerializer(page, many=True).data)

    @extend_schema(
        request=OrderPlaceInputSerializer,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_KEY_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="1 to 255 visible ASCII characters, kept 24 h. The same key with the same body replays "
                "the first response (Idempotent-Replayed: true); with another body 422 idempotency_key_reused; "
                "while the first request runs 409 idempotency_key_in_use.",
            )
        ],
        responses={
            201: OpenApiResponse(OrderSerializer, description="Settled: confirmed, or cancelled (payment declined)."),
            202: OpenApiResponse(
                OrderSerializer, description="payment_pending: finishes in the background; poll Location."
            ),
            400: error_response("Invalid fields (validation_error): unknown products, mixed currencies, ..."),
            403: error_response("The account is no longer available (account_unavailable)."),
            409: error_response(
                "Not in stock in the quantity asked for (out_of_stock), or a request with this Idempotency-Key "
                "is still running (idempotency_key_in_use)."
            ),
        },
        operation_id="orders_create",
    )
    def post(self, request: Request) -> Response:
        serializer = OrderPlaceInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        order = order_place(
            principal=request.user,
            idempotency_key=request.headers.get(IDEMPOTENCY_KEY_HEADER),
            **serializer.validated_data,
        )
        return _order_response(order, settled_status=status.HTTP_201_CREATED)


class OrderDetailView(APIView):
    @extend_schema(responses=OrderSerializer, operation_id="orders_retrieve")
    def get(self, request: Request, order_id: int) -> Response:
        return Response(OrderSerializer(order_get(user_id=request.user.id, order_id=order_id)).data)


class OrderCancelView(APIView):
    @extend_schema(
        request=None,
        responses={
            200: OpenApiResponse(OrderSerializer, description="Cancelled (refunded if it was paid)."),
            202: OpenApiResponse(OrderSerializer, description="refund_pending: the refund finishes in the background."),
            409: error_response("The payment is still being settled; try again shortly (payment_outcome_pending)."),
        },
        operation_id="orders_cancel",
    )
    def post(self, request: Request, order_id: int) -> Response:
        order = order_cancel(principal=request.user, order_id=order_id)
        return _order_response(order, settled_status=status.HTTP_200_OK)


class OrderHistoryView(APIView):
    @extend_schema(responses=OrderHistoryEntrySerializer(many=True), operation_id="orders_history")
    def get(self, request: Request, order_id: int) -> Response:
        entries = order_history(user_id=request.user.id, order_id=order_id)
        return Response(OrderHistoryEntrySerializer(entries, many=True).data)
