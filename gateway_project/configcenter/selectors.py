from __future__ import annotations

from configcenter.models import ConfigVersion


def current_version(service: str, profile: str) -> ConfigVersion | None:
    return ConfigVersion.objects.filter(service=service, profile=profile).order_by("-version").first()


def current_version_number(service: str, profile: str) -> int:
    """The shared marker each gateway worker polls: one indexed lookup of an integer."""
    found = (
        ConfigVersion.objects.filter(service=service, profile=profile)
        .order_by("-version")
        .values_list("version", flat=True)
        .first()
    )
    return found or 0
