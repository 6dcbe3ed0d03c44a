from decimal import Decimal

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

CURRENCY_VALIDATOR = RegexValidator(r"^[A-Z]{3}$", "Use a 3-letter uppercase currency code, e.g. USD.")


class Product(models.Model):
    sku = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    price = models.DecimalField(max_digits=12, decimal_places=2, validators=[MinValueValidator(Decimal("0.01"))])
    currency = models.CharField(max_length=3, default="USD", validators=[CURRENCY_VALIDATOR])
    is_active = models.BooleanField(default=True)
    # Units on the shelf that no order holds. Only catalog.services changes it, with conditional updates
    # (never read-modify-write), so concurrent orders can never sell the same unit twice.
    stock = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.CheckConstraint(condition=models.Q(price__gt=0), name="catalog_product_price_positive"),
            models.CheckConstraint(condition=models.Q(stock__gte=0), name="catalog_product_stock_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.sku} {self.name}"


class StockReservation(models.Model):
    """Units of one product held for one order line. Stock is conserved: for every product,
    ``stock + sum(quantity of its held reservations)`` only changes when an operator restocks it.

    A reservation is created ``held`` (taking the units off ``Product.stock``) and is released at most once
    (giving them back); the status change is a conditional update, so two compensations racing each other
    give the units back once."""

    class Status(models.TextChoices):
        HELD = "held", "Held"
        RELEASED = "released", "Released"

    # The order's reference, not a foreign key: the catalog does not depend on the orders app.
    order_reference = models.UUIDField(db_index=True)
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="reservations")
    quantity = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.HELD)
    created_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            # Reserving the same order twice (a redelivered step) cannot take the units twice.
            models.UniqueConstraint(fields=["order_reference", "product"], name="catalog_reservation_once_per_line"),
            models.CheckConstraint(condition=models.Q(quantity__gte=1), name="catalog_reservation_quantity_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_id} for {self.order_reference} ({self.status})"
