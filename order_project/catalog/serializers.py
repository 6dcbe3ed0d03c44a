from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from catalog.models import Product


class ProductListItemSerializer(serializers.ModelSerializer):
    class Meta:
        model = Product
        fields = ("id", "sku", "name", "price", "currency")


class ProductDetailSerializer(serializers.ModelSerializer):
    class Meta:
        model = Product
        fields = ("id", "sku", "name", "description", "price", "currency")


# Version 2 (/api/v2/products/): a price is an amount with its currency, never a bare number whose
# currency sits in another field.


class MoneySerializer(serializers.Serializer):
    amount = serializers.DecimalField(max_digits=12, decimal_places=2)
    currency = serializers.CharField()


class ProductV2Serializer(serializers.ModelSerializer):
    price = serializers.SerializerMethodField()

    class Meta:
        model = Product
        fields = ("id", "sku", "name", "price")

    @extend_schema_field(MoneySerializer)
    def get_price(self, product: Product) -> dict[str, str]:
        return MoneySerializer({"amount": product.price, "currency": product.currency}).data


class ProductDetailV2Serializer(ProductV2Serializer):
    class Meta(ProductV2Serializer.Meta):
        fields = ("id", "sku", "name", "description", "price")
