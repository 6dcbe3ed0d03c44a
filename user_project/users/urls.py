from django.urls import path

from users import views

urlpatterns = [
    path("users/", views.UserCreateApi.as_view(), name="user-create"),
    path("users/me/", views.UserMeApi.as_view(), name="user-me"),
    path("users/<int:user_id>/", views.UserDetailApi.as_view(), name="user-detail"),
    path("auth/token", views.TokenObtainApi.as_view(), name="auth-token"),
    path("auth/refresh", views.TokenRefreshApi.as_view(), name="auth-refresh"),
    path("auth/logout", views.LogoutApi.as_view(), name="auth-logout"),
]
