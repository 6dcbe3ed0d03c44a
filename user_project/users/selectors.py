from __future__ import annotations

from common.errors import NotFound
from common.internal_auth import Principal
from users.models import User


def user_get_active(*, user_id: int | None) -> User:
    """The active user with this id; a missing or deactivated account is simply not found."""
    user = User.objects.filter(pk=user_id, is_active=True).first() if user_id is not None else None
    if user is None:
        raise NotFound("No such user.")
    return user


def user_get_visible(*, user_id: int, viewer: Principal) -> User:
    """A user record as ``viewer`` may see it: staff see every account (deactivated ones too), anyone else
    only their own active one. Someone else's id is "not found", never "forbidden", so ids can't be probed."""
    if viewer.is_staff:
        user = User.objects.filter(pk=user_id).first()
        if user is None:
            raise NotFound("No such user.")
        return user
    if viewer.id != user_id:
        raise NotFound("No such user.")
    return user_get_active(user_id=user_id)
