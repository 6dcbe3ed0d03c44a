from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.selectors import product_get_active, product_list_active
from catalog.serializers import ProductDetailSerializer, ProductListItemSerializer


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
