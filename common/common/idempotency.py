"""``Idempotency-Key`` for POST endpoints, as Stripe and the IETF httpapi draft describe it.

A client (or a calling service) that sends a key may repeat the request safely:

- the same key with the same body replays the first response exactly (status, body, ``Location``), with
  ``Idempotent-Replayed: true``;
- the same key with a different body is refused with 422 ``idempotency_key_reused``;
- the same key while the first request still runs is refused with 409 ``idempotency_key_in_use``.

Keys are scoped per caller (the view says what a caller is: an end user, a calling service) and kept at
least ``IDEMPOTENCY_KEY_TTL`` seconds (default 24 h); a cleanup command per service purges expired ones.
A response with a 5xx status is not kept: nothing was done that a retry could repeat, so the key is
freed for it. A request that died without answering (a killed worker) holds its key for at most
``IDEMPOTENCY_LOCK_TIMEOUT`` seconds; the next request with the key then runs again, which is why the
endpoints using this must themselves find the work of an earlier attempt (the order service by the key
stored on the order, the payment service by its unique key per caller).

This module holds the protocol only. The records live in a model of each service (common has no models),
named by the view's ``idempotency_model``, with the fields ``scope``, ``key``, ``fingerprint``,
``locked_at``, ``response_status``, ``response_headers``, ``response_body``, ``expires_at`` and a unique
constraint on (scope, key). The claim is its own committed write, outside any transaction of the request,
so that a concurrent request sees it at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, models, transaction
from django.http import HttpResponse
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response

from common.errors import ApplicationError

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# The response headers that are part of "the first response" besides status and body.
KEPT_RESPONSE_HEADERS = ("Content-Type", "Location")
# 1 to 255 visible ASCII characters: no spaces, no control characters.
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


class InvalidIdempotencyKey(ApplicationError):
    status_code = 400
    code = "invalid_idempotency_key"
    message = "The Idempotency-Key header must be 1 to 255 visible ASCII characters."


class IdempotencyKeyReused(ApplicationError):
    status_code = 422
    code = "idempotency_key_reused"
    message = "This Idempotency-Key was already used for a different request."


class IdempotencyKeyInUse(ApplicationError):
    status_code = 409
    code = "idempotency_key_in_use"
    message = "A request with this Idempotency-Key is still being processed; retry it shortly."


def key_ttl() -> timedelta:
    return timedelta(seconds=getattr(settings, "IDEMPOTENCY_KEY_TTL", 24 * 3600))


def lock_timeout() -> timedelta:
    return timedelta(seconds=getattr(settings, "IDEMPOTENCY_LOCK_TIMEOUT", 60))


def is_valid_key(key: str) -> bool:
    return bool(_KEY.fullmatch(key))


def request_fingerprint(request: Request) -> str:
    """What "the same request" means: method, path, the user it acts for, and body, the body compared as
    parsed JSON so that spacing and key order do not matter. The user matters where the scope is a calling
    service acting for many users: one user must never be handed the replay of another's response."""
    body = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    user = getattr(request.user, "id", None)
    return hashlib.sha256(f"{request.method}\n{request.path}\n{user}\n{body}".encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """The right to run the request for a key, held until its response is stored or it is released."""

    model: type[models.Model]
    pk: Any
    locked_at: datetime

    def _mine(self) -> models.QuerySet[Any]:
        # Conditional on our own lock: if the lock timed out and another request took over, we touch nothing.
        return self.model._default_manager.filter(pk=self.pk, locked_at=self.locked_at, response_status__isnull=True)

    def store(self, response: HttpResponse) -> None:
        headers = {name: response[name] for name in KEPT_RESPONSE_HEADERS if response.has_header(name)}
        self._mine().update(
            response_status=response.status_code,
            response_headers=headers,
            response_body=bytes(response.content),
            locked_at=None,
        )

    def release(self) -> None:
        self._mine().delete()


class Replay(Exception):
    """Not an error: the way out of APIView.initial with a ready response."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__("replay")
        self.response = response


def claim(*, model: type[models.Model], scope: str, key: str, fingerprint: str) -> Claim:
    """Claim ``key`` in ``scope`` for a request with ``fingerprint``; raise :class:`Replay` with the first
    response if it already has one, or the 409 / 422 errors above."""
    manager = model._default_manager
    for _ in range(5):
        now = timezone.now()
        try:
            with transaction.atomic():
                record = manager.create(
                    scope=scope, key=key, fingerprint=fingerprint, locked_at=now, expires_at=now + key_ttl()
                )
            return Claim(model=model, pk=record.pk, locked_at=now)
        except IntegrityError:
            pass  # the key exists: look at it
        record = manager.filter(scope=scope, key=key).first()
        if record is None:
            continue  # released or purged in between: claim it afresh
        if record.expires_at <= now:
            manager.filter(pk=record.pk, expires_at=record.expires_at).delete()
            continue
        if record.fingerprint != fingerprint:
            raise IdempotencyKeyReused()
        if record.response_status is not None:
            raise Replay(replay_response(record))
        if record.locked_at is not None and record.locked_at > now - lock_timeout():
            raise IdempotencyKeyInUse()
        # The first request died without answering: take its place (of several takers, one wins).
        if manager.filter(pk=record.pk, response_status__isnull=True, locked_at=record.locked_at).update(locked_at=now):
            return Claim(model=model, pk=record.pk, locked_at=now)
    raise IdempotencyKeyInUse()


def replay_response(record: Any) -> HttpResponse:
    response = HttpResponse(bytes(record.response_body), status=record.response_status)
    for name, value in record.response_headers.items():
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    return response


def purge_expired(model: type[models.Model]) -> int:
    """Delete the keys past their time to live; return how many."""
    deleted, _ = model._default_manager.filter(expires_at__lte=timezone.now()).delete()
    return deleted


class IdempotentPostMixin:
    """For a DRF APIView whose POST accepts ``Idempotency-Key``. Set ``idempotency_model`` and implement
    ``idempotency_scope`` (who the caller is). The key is claimed after authentication and permissions,
    so a refused caller never occupies a key."""

    idempotency_model: type[models.Model]
    _idempotency_claim: Claim | None = None

    def idempotency_scope(self, request: Request) -> str:
        raise NotImplementedError

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        self._idempotency_claim = None
        key = request.headers.get(HEADER)
        if request.method != "POST" or key is None:
            return
        if not is_valid_key(key):
            raise InvalidIdempotencyKey()
        self._idempotency_claim = claim(
            model=self.idempotency_model,
            scope=self.idempotency_scope(request),
            key=key,
            fingerprint=request_fingerprint(request),
        )

    def handle_exception(self, exc: Exception) -> Response | HttpResponse:
        if isinstance(exc, Replay):
            return exc.response
        if isinstance(exc, IdempotencyKeyReused) and self._idempotency_claim is not None:
            # The view found the key already bound to earlier work of another request (its record had been
            # freed by a 5xx): this request never owned the key, so the record must not keep its 422.
            self._idempotency_claim.release()
            self._idempotency_claim = None
        try:
            return super().handle_exception(exc)  # type: ignore[misc,no-any-return]
        except Exception:
            # A crash: free the key for a retry rather than hold it until the lock times out.
            if self._idempotency_claim is not None:
                self._idempotency_claim.release()
                self._idempotency_claim = None
            raise

    def finalize_response(self, request: Request, response: HttpResponse, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        held, self._idempotency_claim = self._idempotency_claim, None
        if held is None:
            return response
        try:
            if response.status_code >= 500:
                held.release()
            else:
                if hasattr(response, "render"):
                    response.render()  # the exact bytes the client gets, so a replay sends the same
                held.store(response)
        except DatabaseError:
            # The work is done and committed; failing to keep its answer must not turn it into a 500 that
            # invites a retry with another key. The key stays locked until IDEMPOTENCY_LOCK_TIMEOUT, then a
            # retry with it runs again and finds its earlier work (see the module docstring).
            logger.exception("could not store the response for an Idempotency-Key; the client still gets it")
        return response
