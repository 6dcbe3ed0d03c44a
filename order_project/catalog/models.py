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
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.CheckConstraint(condition=models.Q(price__gt=0), name="catalog_product_price_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.sku} {self.name}"
