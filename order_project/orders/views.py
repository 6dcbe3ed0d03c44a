from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orders.selectors import order_get, order_list
from orders.serializers import OrderPlaceInputSerializer, OrderSerializer
from orders.services import order_place


class OrderPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


class OrderListCreateView(GenericAPIView):
    # GenericAPIView only for its paginator (and so that the schema shows the paginated shape).
    pagination_class = OrderPagination
    serializer_class = OrderSerializer

    @extend_schema(responses=OrderSerializer(many=True), operation_id="orders_list")
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(order_list(user_id=request.user.id))
        return self.get_paginated_response(OrderSerializer(page, many=True).data)

    @extend_schema(request=OrderPlaceInputSerializer, responses={201: OrderSerializer}, operation_id="orders_create")
    def post(self, request: Request) -> Response:
        serializer = OrderPlaceInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        order = order_place(principal=request.user, **serializer.validated_data)
        return Response(
            OrderSerializer(order).data,
            status=status.HTTP_201_CREATED,
            headers={"Location": f"/api/v1/orders/{order.id}/"},
        )


class OrderDetailView(APIView):
    @extend_schema(responses=OrderSerializer, operation_id="orders_retrieve")
    def get(self, request: Request, order_id: int) -> Response:
        return Response(OrderSerializer(order_get(user_id=request.user.id, order_id=order_id)).data)
