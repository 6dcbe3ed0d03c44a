from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orders.models import Order, OrderHistoryEntry, OrderItem

MAX_LINES = 50
MAX_QUANTITY = 100
MAX_ID = 2**63 - 1


class OrderLineInputSerializer(serializers.Serializer):
    product_id = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    quantity = serializers.IntegerField(min_value=1, max_value=MAX_QUANTITY)


class OrderPlaceInputSerializer(serializers.Serializer):
    """What a customer sends. Prices and the user come from the catalog and the assertion, never from the
    body: any other field (``user_id``, ``unit_price`` ...) is ignored."""

    items = OrderLineInputSerializer(many=True, allow_empty=False, max_length=MAX_LINES)
    payment_method = serializers.CharField(max_length=64)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError(_line_errors_as_list(exc.detail, data)) from exc

    def validate_items(self, items: list[dict[str, int]]) -> list[dict[str, int]]:
        seen: set[int] = set()
        errors: list[dict[str, Any]] = []
        for line in items:
            duplicate = line["product_id"] in seen
            errors.append({"product_id": ["This product is already in the order."]} if duplicate else {})
            seen.add(line["product_id"])
        if any(errors):
            raise serializers.ValidationError(errors)
        return items


def _line_errors_as_list(errors: Any, data: Any) -> Any:
    """DRF reports a list's errors as {index: errors}; this API reports them as a list with one entry per
    line ({} for a valid one), the same shape as the catalog checks in orders.services produce."""
    line_errors = errors.get("items") if isinstance(errors, dict) else None
    if not isinstance(line_errors, dict) or not all(isinstance(index, int) for index in line_errors):
        return errors
    return {**errors, "items": [line_errors.get(index, {}) for index in range(len(data["items"]))]}


class OrderItemSerializer(serializers.ModelSerializer):
    class Meta:
        model = OrderItem
        fields = ("product_id", "sku", "name", "quantity", "unit_price", "line_total")


class OrderPaymentSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="payment_id")
    status = serializers.CharField(source="payment_status")
    amount = serializers.DecimalField(source="total_amount", max_digits=12, decimal_places=2)


class OrderSerializer(serializers.ModelSerializer):
    items = OrderItemSerializer(many=True, read_only=True)
    payment = serializers.SerializerMethodField()

    class Meta:
        model = Order
        fields = (
            "id",
            "user_id",
            "status",
            "cancellation_reason",
            "total_amount",
            "currency",
            "items",
            "payment",
            "created_at",
        )

    @extend_schema_field(OrderPaymentSerializer(allow_null=True))
    def get_payment(self, order: Order) -> dict[str, Any] | None:
        return None if order.payment_id is None else OrderPaymentSerializer(order).data


class OrderHistoryEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = OrderHistoryEntry
        fields = ("event", "from_status", "to_status", "details", "created_at")
