from django.urls import path

from payments import views

urlpatterns = [
    path("payments/", views.PaymentChargeView.as_view(), name="payment-charge"),
    path("payments/<int:payment_id>/", views.PaymentDetailView.as_view(), name="payment-detail"),
    path("payments/<int:payment_id>/refund", views.PaymentRefundView.as_view(), name="payment-refund"),
]
