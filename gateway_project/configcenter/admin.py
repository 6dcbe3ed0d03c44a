"""The config center in the gateway's admin: versions are added, never edited or deleted. "Add" starts
from the current values of the service and profile named in the query string (the list links there), and
the form refuses a bad value with the schema's message for that key."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from common.messaging_admin import OutboxEventAdmin
from configcenter.models import ConfigVersion, OutboxEvent
from configcenter.schema import FAMILIES, KEYS, InvalidConfig, check_scope, validate
from configcenter.selectors import current_version
from configcenter.services import save_version

KEYS_HELP = "; ".join(
    [f"{name}: {key.kind} {key.minimum:g}..{key.maximum:g}" for name, key in KEYS.items()]
    + [f"{family}.<name>: {key.kind}" for family, key in FAMILIES.items()]
)


class ConfigVersionForm(forms.ModelForm):
    values = forms.JSONField(initial=dict, help_text=f"A JSON object. Known keys: {KEYS_HELP}.")

    class Meta:
        model = ConfigVersion
        fields = ("service", "profile", "values", "comment")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        try:
            check_scope(cleaned.get("service") or "", cleaned.get("profile") or "")
        except InvalidConfig as exc:
            for field, problem in exc.details.items():
                self.add_error(field, problem)
        if "values" in cleaned:
            try:
                cleaned["values"] = validate(cleaned["values"])
            except InvalidConfig as exc:
                problems = exc.details or {"": exc.message}
                self.add_error("values", [f"{key}: {problem}" if key else problem for key, problem in problems.items()])
        return cleaned


@admin.register(ConfigVersion)
class ConfigVersionAdmin(admin.ModelAdmin):
    form = ConfigVersionForm
    list_display = ("service", "profile", "version", "author", "created_at", "comment", "new_version")
    list_filter = ("service", "profile")
    search_fields = ("service", "profile", "author", "comment")
    readonly_fields = ("version", "author", "created_at", "values_json")

    def get_fields(self, request: HttpRequest, obj: ConfigVersion | None = None) -> Any:
        if obj is None:
            return ("service", "profile", "values", "comment")
        return ("service", "profile", "version", "author", "created_at", "comment", "values_json")

    def get_readonly_fields(self, request: HttpRequest, obj: ConfigVersion | None = None) -> Any:
        return () if obj is None else self.get_fields(request, obj)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = super().get_changeform_initial_data(request)
        latest = current_version(str(initial.get("service", "")), str(initial.get("profile", "default")))
        if latest is not None:
            initial["values"] = latest.values
        return initial

    @admin.display(description="values")
    def values_json(self, obj: ConfigVersion) -> str:
        return json.dumps(obj.values, indent=2, sort_keys=True)

    @admin.display(description="")
    def new_version(self, obj: ConfigVersion) -> str:
        return format_html(
            '<a href="add/?service={}&profile={}">new version from the latest</a>', obj.service, obj.profile
        )

    def has_change_permission(self, request: HttpRequest, obj: ConfigVersion | None = None) -> bool:
        return False  # append-only: a change is a new version

    def has_delete_permission(self, request: HttpRequest, obj: ConfigVersion | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: ConfigVersion, form: Any, change: bool) -> None:
        saved = save_version(
            service=obj.service,
            profile=obj.profile,
            values=obj.values,
            author=request.user.get_username(),
            comment=obj.comment,
        )
        # The admin logs and redirects to the object it was given: make it the saved one.
        obj.pk, obj.version, obj.author, obj.created_at = saved.pk, saved.version, saved.author, saved.created_at
        obj._state.adding = False


admin.site.register(OutboxEvent, OutboxEventAdmin)
