from django.db.models import Prefetch, QuerySet

from common.errors import NotFound
from orders.models import Order, OrderHistoryEntry, OrderItem


def order_list(*, user_id: int) -> QuerySet[Order]:
    """The user's orders, newest first, with their items in one extra query."""
    return (
        Order.objects.filter(user_id=user_id)
        .prefetch_related(Prefetch("items", queryset=OrderItem.objects.order_by("id")))
        .order_by("-created_at", "-id")
    )


def order_get(*, user_id: int, order_id: int) -> Order:
    """One of the user's own orders. Anyone else's, even for staff, is "not found": this API only ever
    shows people their own orders (staff use the admin)."""
    order = order_list(user_id=user_id).filter(id=order_id).first()
    if order is None:
        raise NotFound("No such order.")
    return order


def order_history(*, user_id: int, order_id: int) -> QuerySet[OrderHistoryEntry]:
    """The history of one of the user's own orders, oldest first (NotFound for anyone else's)."""
    order = order_get(user_id=user_id, order_id=order_id)
    return OrderHistoryEntry.objects.filter(order=order).order_by("id")
