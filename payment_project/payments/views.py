from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.idempotency import HEADER as IDEMPOTENCY_KEY_HEADER
from common.idempotency import REPLAYED_HEADER, IdempotentPostMixin
from common.internal_auth import IsCallerService, IsEndUser
from payments.models import IdempotencyKey
from payments.selectors import payment_get, payments_by_idempotency_key
from payments.serializers import PaymentChargeInputSerializer, PaymentLookupSerializer, PaymentOutputSerializer
from payments.services import payment_charge, payment_refund


class PaymentChargeView(IdempotentPostMixin, APIView):
    """Charge an order, or find the charge made with an idempotency key. Only the order service calls
    this, on behalf of the ordering user."""

    permission_classes = [IsEndUser, IsCallerService]
    allowed_callers = ("orders",)
    idempotency_model = IdempotencyKey

    def idempotency_scope(self, request: Request) -> str:
        return f"service:{request.user.caller}"  # two calling services may pick the same key

    @extend_schema(
        operation_id="payments_lookup",
        parameters=[PaymentLookupSerializer],
        responses={200: OpenApiResponse(description='{"results": [payment]} or {"results": []}')},
    )
    def get(self, request: Request) -> Response:
        """Reconciliation: the charge the calling service made with this Idempotency-Key, if any (a list of
        none or one, so that "no such charge" is an answer, never confused with a wrong address)."""
        query = PaymentLookupSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        found = payments_by_idempotency_key(
            principal=request.user, idempotency_key=query.validated_data["idempotency_key"]
        )
        return Response({"results": PaymentOutputSerializer(found, many=True).data})

    @extend_schema(
        operation_id="payments_create",
        request=PaymentChargeInputSerializer,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_KEY_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="1 to 255 visible ASCII characters, kept 24 h. Repeating a request with the same key "
                "replays the first response (Idempotent-Replayed: true); a different request with it is refused "
                "(422); while the first still runs, 409 idempotency_key_in_use.",
            )
        ],
        responses={
            201: OpenApiResponse(PaymentOutputSerializer, description="Charged (status succeeded or failed)."),
            200: OpenApiResponse(
                PaymentOutputSerializer,
                description="The payment of an earlier request whose stored response has expired.",
            ),
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


class PaymentRefundView(APIView):
    """Refund a payment in full. Only the order service calls this, for the paying user; repeating it is
    harmless (the refunded payment again)."""

    permission_classes = [IsEndUser, IsCallerService]
    allowed_callers = ("orders",)

    @extend_schema(operation_id="payments_refund", request=None, responses={200: PaymentOutputSerializer})
    def post(self, request: Request, payment_id: int) -> Response:
        payment = payment_refund(principal=request.user, payment_id=payment_id)
        return Response(PaymentOutputSerializer(payment).data)
