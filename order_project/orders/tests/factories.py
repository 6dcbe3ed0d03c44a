from decimal import Decimal

import factory

from catalog.tests.factories import ProductFactory
from orders.models import Order, OrderItem


class OrderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Order

    user_id = 7
    status = Order.Status.CONFIRMED
    total_amount = Decimal("10.00")
    currency = "USD"
    payment_id = factory.Sequence(lambda n: 1000 + n)
    payment_status = Order.PaymentStatus.SUCCEEDED


class OrderItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = OrderItem

    order = factory.SubFactory(OrderFactory)
    product = factory.SubFactory(ProductFactory)
    sku = factory.SelfAttribute("product.sku")
    name = factory.SelfAttribute("product.name")
    quantity = 1
    unit_price = factory.SelfAttribute("product.price")
    line_total = factory.LazyAttribute(lambda item: item.unit_price * item.quantity)
