from decimal import Decimal

from rest_framework import serializers

from payments.models import Payment

MAX_BIGINT = 2**63 - 1


class PaymentChargeInputSerializer(serializers.Serializer):
    order_id = serializers.IntegerField(min_value=1, max_value=MAX_BIGINT)
    amount = serializers.DecimalField(max_digits=12, decimal_places=2, min_value=Decimal("0.01"))
    currency = serializers.RegexField(
        r"^[A-Z]{3}\Z", error_messages={"invalid": "Enter a 3-letter uppercase currency code, e.g. USD."}
    )
    # No max_length: every string that is not one of our tokens is the same error, invalid_payment_method.
    payment_method = serializers.CharField(help_text="A test token, e.g. tok_visa or tok_chargeDeclined.")


class PaymentLookupSerializer(serializers.Serializer):
    idempotency_key = serializers.RegexField(r"^[\x21-\x7e]{1,255}\Z")


class PaymentOutputSerializer(serializers.ModelSerializer):
    failure_code = serializers.SerializerMethodField()

    class Meta:
        model = Payment
        fields = ("id", "order_id", "user_id", "status", "amount", "currency", "failure_code", "created_at")
        read_only_fields = fields

    def get_failure_code(self, payment: Payment) -> str | None:
        return payment.failure_code or None
