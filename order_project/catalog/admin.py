from django.contrib import admin

from catalog.models import Product


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("sku", "name", "price", "currency", "is_active")
    list_editable = ("price", "is_active")
    list_filter = ("is_active", "currency")
    search_fields = ("sku", "name")
    ordering = ("sku",)
    readonly_fields = ("created_at",)
    fields = ("sku", "name", "description", "price", "currency", "is_active", "created_at")
