from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework.generics import ListAPIView
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.models import Product
from catalog.selectors import product_get_active, product_list_active
from catalog.serializers import (
    ProductDetailSerializer,
    ProductDetailV2Serializer,
    ProductListItemSerializer,
    ProductV2Serializer,
)


class ProductListView(APIView):
    # Anyone may browse, but the request must still come through the gateway (default authentication).
    permission_classes = [AllowAny]

    @extend_schema(responses=ProductListItemSerializer(many=True), operation_id="products_list")
    def get(self, request: Request) -> Response:
        return Response(ProductListItemSerializer(product_list_active(), many=True).data)


class ProductDetailView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=ProductDetailSerializer, operation_id="products_retrieve")
    def get(self, request: Request, product_id: int) -> Response:
        return Response(ProductDetailSerializer(product_get_active(product_id=product_id)).data)


class ProductCursorPagination(CursorPagination):
    """Pages that stay correct while products are added: a cursor (the position after the last id seen)
    rather than a page number. Links are relative (path and query), since the service never knows the
    public host the client called through the gateway."""

    ordering = "id"
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> list[Any] | None:
        page = super().paginate_queryset(queryset, request, view)
        self.base_url = request.get_full_path()
        return page


class ProductListV2View(ListAPIView):
    permission_classes = [AllowAny]
    serializer_class = ProductV2Serializer
    pagination_class = ProductCursorPagination

    def get_queryset(self) -> QuerySet[Product]:
        return product_list_active()

    @extend_schema(operation_id="products_v2_list")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class ProductDetailV2View(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=ProductDetailV2Serializer, operation_id="products_v2_retrieve")
    def get(self, request: Request, product_id: int) -> Response:
        return Response(ProductDetailV2Serializer(product_get_active(product_id=product_id)).data)
