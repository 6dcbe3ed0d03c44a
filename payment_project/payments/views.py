from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.internal_auth import IsCallerService, IsEndUser
from payments.selectors import payment_get
from payments.serializers import PaymentChargeInputSerializer, PaymentOutputSerializer
from payments.services import payment_charge

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"


class PaymentChargeView(APIView):
    """Charge an order. Only the order service calls this, on behalf of the ordering user."""

    permission_classes = [IsEndUser, IsCallerService]
    allowed_callers = ("orders",)

    @extend_schema(
        operation_id="payments_create",
        request=PaymentChargeInputSerializer,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_KEY_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="1 to 255 visible ASCII characters. Repeating a request with the same key returns "
                "the first payment (200, Idempotent-Replayed: true); a different request with it is refused (422).",
            )
        ],
        responses={
            201: OpenApiResponse(PaymentOutputSerializer, description="Charged (status succeeded or failed)."),
            200: OpenApiResponse(PaymentOutputSerializer, description="Replay of an earlier request with this key."),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = PaymentChargeInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        payment, created = payment_charge(
            principal=request.user,
            idempotency_key=request.headers.get(IDEMPOTENCY_KEY_HEADER),
            **serializer.validated_data,
        )
        body = PaymentOutputSerializer(payment).data
        if created:
            return Response(body, status=status.HTTP_201_CREATED)
        return Response(body, status=status.HTTP_200_OK, headers={REPLAYED_HEADER: "true"})


class PaymentDetailView(APIView):
    @extend_schema(operation_id="payments_retrieve", responses={200: PaymentOutputSerializer})
    def get(self, request: Request, payment_id: int) -> Response:
        payment = payment_get(principal=request.user, payment_id=payment_id)
        return Response(PaymentOutputSerializer(payment).data)
