from typing import Any

from django.contrib import admin
from django.forms import ModelForm
from django.http import HttpRequest

from catalog.models import Product


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("sku", "name", "price", "currency", "stock", "is_active")
    list_editable = ("price", "is_active")
    list_filter = ("is_active", "currency")
    search_fields = ("sku", "name")
    ordering = ("sku",)
    readonly_fields = ("created_at",)
    fields = ("sku", "name", "description", "price", "currency", "stock", "is_active", "created_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # The initial stock is set when the product is added; after that only orders move it (conditional
        # updates in catalog.services), never a form holding a value read before the last order.
        return (*self.readonly_fields, "stock") if obj is not None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Product, form: ModelForm, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            return
        # Only the fields the form changed: a full save would write back the stock as it was read when this
        # request began, undoing any reservation made since.
        changed = [name for name in form.changed_data if name != "stock"]
        if changed:
            obj.save(update_fields=changed)
