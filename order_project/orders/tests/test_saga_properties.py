"""A hypothesis state machine over the order saga: any interleaving of orders, step outcomes at the payment
service (success, decline, unknown method, refused connection, timeout before or after the charge, 5xx),
background sweeps, redelivered steps and cancellations. The real saga, catalog and database throughout;
only the network edge is the fake payment service.

Orders are placed with or without an ``Idempotency-Key`` drawn from a few: a key used again with the same
lines and card is a client's retry (the same order back, nothing charged again), with others a 422.

Checked after every step: at most one payment per order, no order confirmed (or refunding) without a
charge, stock conserved. After the network heals and the background settles everything: every order
confirmed or cancelled, total charged = total paid + total refunded, stock held = stock sold.

``SAGA_PROPERTY_EXAMPLES`` raises the number of examples (the fault script's scenario 7 runs many more than
the suite); with ``SAGA_PROPERTY_REPORT`` set to a path, the run's counts are written there as JSON."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import responses
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from catalog.errors import OutOfStock
from catalog.models import Product, StockReservation
from catalog.tests.factories import ProductFactory
from common.idempotency import IdempotencyKeyReused
from common.internal_auth import Principal
from orders import saga
from orders.errors import PaymentOutcomePending
from orders.models import Order
from orders.services import order_cancel, order_place
from orders.tests.conftest import USER_ID, FakePaymentService, forget_service_clients, user_url

INITIAL_STOCK = 6
CUSTOMER = Principal(id=USER_ID, is_staff=False, caller="gateway")
NETWORK = ["up", "down", "lose_answers", "timeout", "error"]
METHODS = ["tok_visa", "tok_chargeDeclined", "tok_bogus"]
KEYS = [None, None, "key-a", "key-b"]  # half the orders without a key
# What the runs did, over every example: printed by the fault script's scenario 7.
COUNTS: Counter[str] = Counter()


class OrderSaga(RuleBasedStateMachine):
    mock: responses.RequestsMock  # the test's HTTP edge, set before the run

    def __init__(self) -> None:
        super().__init__()
        forget_service_clients()  # each example starts with closed circuit breakers
        self.mock.reset()
        self.mock.get(user_url(), json={"id": USER_ID}, status=200)
        self.payments = FakePaymentService(self.mock)
        self.products = [ProductFactory(stock=INITIAL_STOCK) for _ in range(2)]
        self.order_ids: list[int] = []
        self.keyed: dict[str, tuple[int, tuple[int, int, str]]] = {}  # key -> (order id, its request)
        COUNTS["examples"] += 1

    # --- what can happen ----------------------------------------------------------------------------------

    @rule(mode=st.sampled_from(NETWORK))
    def network(self, mode: str) -> None:
        self.payments.mode = mode
        COUNTS[f"network {mode}"] += 1

    @rule(
        product=st.integers(0, 1),
        quantity=st.integers(1, 4),
        method=st.sampled_from(METHODS),
        key=st.sampled_from(KEYS),
    )
    def place(self, product: int, quantity: int, method: str, key: str | None) -> None:
        request = (product, quantity, method)
        charges_before = len(self.payments.charged())
        try:
            order = order_place(
                principal=CUSTOMER,
                items=[{"product_id": self.products[product].id, "quantity": quantity}],
                payment_method=method,
                # The database outlives an example: each example has keys of its own.
                idempotency_key=None if key is None else f"{key}-{COUNTS['examples']}",
            )
        except OutOfStock:
            COUNTS["out of stock"] += 1
            return
        except IdempotencyKeyReused:
            # Only ever for a key already holding an order placed with other lines or another card.
            assert key in self.keyed
            assert self.keyed[key][1] != request
            COUNTS["key reused with another body (422)"] += 1
            return
        if key is not None and key in self.keyed:
            # A client's retry: the same order, resumed; never a second order, at most its one charge.
            assert self.keyed[key] == (order.id, request)
            assert len(self.payments.charged()) <= charges_before + 1
            COUNTS["retries with a key (same order back)"] += 1
            return
        if key is not None:
            self.keyed[key] = (order.id, request)
        self.order_ids.append(order.id)
        COUNTS["orders placed"] += 1

    @rule(data=st.data())
    def client_retries_a_keyed_request(self, data: st.DataObject) -> None:
        # The same request again with its key (the client lost the answer): the same order, never another.
        if not self.keyed:
            return
        key = data.draw(st.sampled_from(sorted(self.keyed)))
        order_id, (product, quantity, method) = self.keyed[key]
        order = order_place(
            principal=CUSTOMER,
            items=[{"product_id": self.products[product].id, "quantity": quantity}],
            payment_method=method,
            idempotency_key=f"{key}-{COUNTS['examples']}",
        )
        assert order.id == order_id
        COUNTS["retries with a key (same order back)"] += 1

    @rule()
    def background_sweep(self) -> None:
        self._make_everything_due()
        saga.sweep()
        COUNTS["background sweeps"] += 1

    @rule(data=st.data())
    def redelivered_step(self, data: st.DataObject) -> None:
        # A step run again (a redelivered task, a lease that ran out), whatever the order's state.
        if self.order_ids:
            saga.advance(data.draw(st.sampled_from(self.order_ids)), only_if_due=False)
            COUNTS["redelivered steps"] += 1

    @rule(data=st.data())
    def customer_cancels(self, data: st.DataObject) -> None:
        if self.order_ids:
            # 409 while the payment's outcome is unknown: a refusal, not a failure of the saga
            try:
                order_cancel(principal=CUSTOMER, order_id=data.draw(st.sampled_from(self.order_ids)))
                COUNTS["cancellations"] += 1
            except PaymentOutcomePending:
                COUNTS["cancellations refused while the outcome is unknown (409)"] += 1

    # --- what must always hold ----------------------------------------------------------------------------

    @invariant()
    def at_most_one_payment_per_order(self) -> None:
        for order_id in self.order_ids:
            assert len(self.payments.by_order(order_id)) <= 1

    @invariant()
    def never_confirmed_or_refunding_without_a_charge(self) -> None:
        for order in self._orders():
            if order.status in (Order.Status.CONFIRMED, Order.Status.REFUND_PENDING):
                [payment] = self.payments.by_order(order.id)
                assert payment["id"] == order.payment_id
                assert payment["status"] in ("succeeded", "refunded")
            if order.payment_status == Order.PaymentStatus.REFUNDED:
                assert [p["status"] for p in self.payments.by_order(order.id)] == ["refunded"]

    @invariant()
    def stock_is_conserved(self) -> None:
        for product in self.products:
            product.refresh_from_db()
            assert product.stock + self._held(product) == INITIAL_STOCK

    def teardown(self) -> None:
        # The network heals and the background runs until nothing is left to do.
        self.payments.mode = "up"
        # The breakers' cool-down passes too: the sweeps below stand for the minutes that follow recovery.
        forget_service_clients()
        for _ in range(5):
            self._make_everything_due()
            saga.sweep()
        orders = self._orders()
        assert {order.status for order in orders} <= {Order.Status.CONFIRMED, Order.Status.CANCELLED}
        charged = self._sum(p["amount"] for p in self.payments.payments.values() if p["status"] == "succeeded")
        refunded = self._sum(p["amount"] for p in self.payments.payments.values() if p["status"] == "refunded")
        paid = self._sum(o.total_amount for o in orders if o.status == Order.Status.CONFIRMED)
        refunds_recorded = self._sum(o.total_amount for o in orders if o.payment_status == Order.PaymentStatus.REFUNDED)
        assert charged == paid
        assert refunded == refunds_recorded
        sold = {product.id: 0 for product in self.products}
        for order in orders:
            if order.status == Order.Status.CONFIRMED:
                for item in order.items.all():
                    sold[item.product_id] += item.quantity
        for product in self.products:
            assert self._held(product) == sold[product.id]
        COUNTS["confirmed"] += sum(1 for order in orders if order.status == Order.Status.CONFIRMED)
        COUNTS["cancelled"] += sum(1 for order in orders if order.status == Order.Status.CANCELLED)
        COUNTS["charges"] += len(self.payments.charged())
        COUNTS["refunds"] += sum(1 for p in self.payments.payments.values() if p["status"] == "refunded")
        COUNTS["charge calls (retries included)"] += self.payments.charge_calls
        COUNTS["double charges"] += sum(1 for order_id in self.order_ids if len(self.payments.by_order(order_id)) > 1)

    # --- helpers ------------------------------------------------------------------------------------------

    def _orders(self) -> list[Order]:
        return list(Order.objects.filter(id__in=self.order_ids))

    def _make_everything_due(self) -> None:
        Order.objects.filter(id__in=self.order_ids, next_attempt_at__isnull=False).update(
            next_attempt_at=timezone.now() - timedelta(seconds=1)
        )

    @staticmethod
    def _held(product: Product) -> int:
        held = StockReservation.objects.filter(product=product, status=StockReservation.Status.HELD)
        return sum(held.values_list("quantity", flat=True))

    @staticmethod
    def _sum(amounts: Any) -> Decimal:
        return sum((Decimal(str(amount)) for amount in amounts), Decimal("0"))


@pytest.mark.django_db
def test_the_saga_never_charges_twice_never_confirms_unpaid_and_conserves_stock(http, settings_override) -> None:
    OrderSaga.mock = http
    COUNTS.clear()
    run_state_machine_as_test(
        OrderSaga,
        settings=settings(
            max_examples=int(os.environ.get("SAGA_PROPERTY_EXAMPLES", "15")),
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
    if report := os.environ.get("SAGA_PROPERTY_REPORT"):
        with open(report, "w") as file:
            json.dump(dict(COUNTS), file)


@pytest.fixture
def settings_override(settings: Any) -> None:
    settings.ORDER_SAGA_RETRY_BASE_SECONDS = 0
