from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from common.errors import Conflict
from common.events import publish_event
from configcenter.models import ConfigVersion
from configcenter.schema import check_scope, validate
from configcenter.selectors import current_version_number

CHANGED_EVENT = "config.changed"


class VersionConflict(Conflict):
    code = "config_version_conflict"
    message = "The configuration changed since you read it; read it again and reapply your change."


def save_version(
    *,
    service: str,
    profile: str,
    values: Any,
    author: str,
    comment: str = "",
    expected_version: int | None = None,
) -> ConfigVersion:
    """Validate ``values`` and save them as the next version of ``service``/``profile``, announcing it with
    a ``config.changed`` event in the same transaction. ``expected_version``: refuse unless the current
    version is still that one (an editor's optimistic lock)."""
    check_scope(service, profile)
    cleaned = validate(values)
    try:
        with transaction.atomic():
            current = current_version_number(service, profile)
            if expected_version is not None and expected_version != current:
                raise VersionConflict(details={"current_version": current})
            # Two saves racing for the same number: the unique constraint lets one win; the other is a 409.
            saved = ConfigVersion.objects.create(
                service=service,
                profile=profile,
                version=current + 1,
                values=cleaned,
                author=author,
                comment=comment[:200],
            )
            publish_event(
                CHANGED_EVENT,
                {"service": service, "profile": profile, "version": saved.version},
                aggregate_id=f"{service}/{profile}",
            )
    except IntegrityError as exc:
        raise VersionConflict() from exc
    return saved
