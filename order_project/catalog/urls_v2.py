"""Version 2 of the catalog's API, mounted at /api/v2/ (version 1 is deprecated; see the README)."""

from django.urls import path

from catalog.views import ProductDetailV2View, ProductListV2View

urlpatterns = [
    path("products/", ProductListV2View.as_view(), name="product-list-v2"),
    path("products/<int:product_id>/", ProductDetailV2View.as_view(), name="product-detail-v2"),
]
