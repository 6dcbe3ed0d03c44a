from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.db.models import QuerySet
from django.http import HttpRequest

from users.models import RefreshToken, SigningKey, User
from users.services import refresh_token_revoke


class UserAdminCreationForm(AdminUserCreationForm):
    class Meta(AdminUserCreationForm.Meta):
        model = User
        fields = ("email", "name")
        field_classes = {}


class UserAdminChangeForm(UserChangeForm):
    class Meta(UserChangeForm.Meta):
        model = User
        fields = (
            "email",
            "password",
            "name",
            "is_active",
            "is_staff",
            "is_superuser",
            "groups",
            "user_permissions",
            "last_login",
            "date_joined",
        )
        field_classes = {}


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = UserAdminChangeForm
    add_form = UserAdminCreationForm
    list_display = ("email", "name", "is_staff", "is_active", "date_joined")
    list_filter = ("is_staff", "is_superuser", "is_active", "date_joined")
    search_fields = ("email", "name")
    ordering = ("email",)
    readonly_fields = ("last_login", "date_joined")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Personal info", {"fields": ("name",)}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("email", "name", "usable_password", "password1", "password2"),
            },
        ),
    )


@admin.register(RefreshToken)
class RefreshTokenAdmin(admin.ModelAdmin):
    """Issued refresh tokens, read-only: a token's row must match the JWT handed out. Revoke with the action."""

    list_display = ("id", "user", "family", "created_at", "expires_at", "rotated_at", "revoked_at", "revoked_reason")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "revoked_reason", "created_at", "expires_at")
    search_fields = ("user__email",)
    ordering = ("-created_at",)
    list_select_related = ("user",)
    # The token itself is never stored, only its hash, which is of no use to anyone reading this page.
    fields = ("user", "family", "created_at", "expires_at", "rotated_at", "revoked_at", "revoked_reason")
    readonly_fields = fields
    actions = ("revoke",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: RefreshToken | None = None) -> bool:
        return False

    @admin.action(description="Revoke selected refresh tokens", permissions=("delete",))
    def revoke(self, request: HttpRequest, queryset: QuerySet[RefreshToken]) -> None:
        count = refresh_token_revoke(tokens=queryset, reason=RefreshToken.RevokedReason.ADMIN)
        self.message_user(request, f"Revoked {count} refresh token(s).", messages.SUCCESS)


@admin.register(SigningKey)
class SigningKeyAdmin(admin.ModelAdmin):
    """The token signing keys, read-only: rotate and retire them with ``manage.py signing_keys``."""

    list_display = ("kid", "activated_at", "retired_at", "created_at")
    ordering = ("-activated_at",)
    fields = ("kid", "public_key", "created_at", "activated_at", "retired_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: SigningKey | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: SigningKey | None = None) -> bool:
        return False
