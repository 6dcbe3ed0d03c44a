from django.urls import path

from orders.views import OrderCancelView, OrderDetailView, OrderHistoryView, OrderListCreateView

urlpatterns = [
    path("orders/", OrderListCreateView.as_view(), name="order-list"),
    path("orders/<int:order_id>/", OrderDetailView.as_view(), name="order-detail"),
    path("orders/<int:order_id>/cancel", OrderCancelView.as_view(), name="order-cancel"),
    path("orders/<int:order_id>/history", OrderHistoryView.as_view(), name="order-history"),
]
