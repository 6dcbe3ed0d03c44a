from django.db.models import QuerySet

from common.errors import NotFound
from common.internal_auth import Principal
from payments.models import Payment


def payment_get(*, principal: Principal, payment_id: int) -> Payment:
    """The payment, if the principal may see it: their own, or any for staff. Otherwise NotFound, so that
    nobody learns which ids exist."""
    payments = Payment.objects.all()
    if not principal.is_staff:
        payments = payments.filter(user_id=principal.id)
    payment = payments.filter(id=payment_id).first()
    if payment is None:
        raise NotFound("No such payment.")
    return payment


def payments_by_idempotency_key(*, principal: Principal, idempotency_key: str) -> QuerySet[Payment]:
    """The calling service's payment made with ``idempotency_key`` for the principal's user (none or one):
    how the order service learns the outcome of a charge whose answer it never got."""
    return Payment.objects.filter(caller=principal.caller, idempotency_key=idempotency_key, user_id=principal.id)
