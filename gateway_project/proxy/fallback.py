"""Stale copies: for a route with ``stale_fallback`` (the catalog), a recent copy of a successful answer
is served, marked stale, when the service is down or its breaker is open, instead of a 503.

What is kept: 200 answers to anonymous GETs (so a copy can never hold anything about one user), without
Set-Cookie or ``Cache-Control: private/no-store``, of at most ``STALE_MAX_BYTES``, in the cache (Redis
when ``REDIS_URL`` is set, so every worker serves the same copies; else per process, at most 300) for
``STALE_MAX_AGE`` seconds. The copy is taken while the body streams to the client, and a worker
refreshes a given path at most every ``STALE_MAX_AGE / 60`` seconds (1 s at least), so the catalog's
normal traffic costs a cache write now and then, not one per request.

The target (path and query) is the copy's key, and a client may invent query strings the service answers
200 to all the same (an unknown parameter, a bad page size): each would be a new copy of up to
``STALE_MAX_BYTES`` in the cache that also holds the rate limits and the breakers' state. So at most
``STALE_MAX_COPIES`` copies are taken per service per ``STALE_MAX_AGE`` window, counted in the cache (one
count for every worker with Redis): a flood of invented targets then only stops copies being refreshed
until the window ends, while the copies already taken keep serving.

A stale answer carries ``X-Cache: stale``, ``Age`` (seconds since it was copied) and
``Warning: 110 - "Response is Stale"``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Protocol

import urllib3
from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

_NOT_KEPT_HEADERS = frozenset({"date", "server", "connection", "keep-alive", "transfer-encoding", "age"})
_next_copy: dict[str, float] = {}  # cache key -> monotonic time this worker copies that path again
_lock = threading.Lock()
_generation = ""  # the same in every worker, so they share copies; only tests start afresh


def _key(service: str, target: str) -> str:
    return f"stale{_generation}:{service}:{hashlib.sha256(target.encode()).hexdigest()}"


def wants_copy(service: str, target: str, response: Copyable) -> str | None:
    """The cache key to copy this answer under, or None when no copy is due or allowed."""
    if response.status != 200 or "set-cookie" in response.headers:
        return None
    cache_control = response.headers.get("Cache-Control", "").lower()
    if "no-store" in cache_control or "private" in cache_control:
        return None
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > settings.STALE_MAX_BYTES:
        return None
    key = _key(service, target)
    now = time.monotonic()
    with _lock:
        if _next_copy.get(key, 0.0) > now:
            return None
        if len(_next_copy) > 10_000:  # bounded: forgetting only means an earlier refresh
            _next_copy.clear()
        _next_copy[key] = now + max(1.0, settings.STALE_MAX_AGE / 60)
    return key if _within_budget(service) else None


def _within_budget(service: str) -> bool:
    """Count one more copy of ``service``'s answers in this window; False once STALE_MAX_COPIES were taken
    (or the cache cannot count: then no copy could be kept either)."""
    window = int(time.time() // max(1, settings.STALE_MAX_AGE))
    budget_key = f"stale{_generation}:copies:{service}:{window}"
    try:
        cache.add(budget_key, 0, timeout=2 * max(1, settings.STALE_MAX_AGE))
        taken = cache.incr(budget_key)
    except Exception as exc:  # ValueError: expired between add and incr; anything else: the cache is down
        logger.warning("could not count stale copies: %s", exc)
        return False
    if taken == settings.STALE_MAX_COPIES + 1:
        logger.warning("stale copies of %s: %s taken in this window, no more until it ends", service, taken - 1)
    return taken <= settings.STALE_MAX_COPIES


class Copyable(Protocol):
    """What a copy is taken of: a service's answer (proxy/connections.py), its body being streamed."""

    status: int
    headers: urllib3.HTTPHeaderDict


async def copying(key: str, response: Copyable, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pass the body through, keeping it when it was read to its end within the size limit."""
    kept: list[bytes] = []
    size = 0
    limit = settings.STALE_MAX_BYTES
    async for chunk in chunks:
        if size <= limit:
            size += len(chunk)
            kept.append(chunk)
        yield chunk
    if size <= limit:
        headers = [(n, v) for n, v in response.headers.items() if n.lower() not in _NOT_KEPT_HEADERS]
        try:
            cache.set(key, (time.time(), headers, b"".join(kept)), timeout=settings.STALE_MAX_AGE)
        except Exception as exc:  # the cache being down must never fail the answer that is streaming
            logger.warning("could not keep a stale copy: %s", exc)


class StoredResponse:
    """A stale copy, with the part of proxy/connections.py's response API the proxy uses."""

    def __init__(self, headers: urllib3.HTTPHeaderDict, body: bytes) -> None:
        self.status = 200
        self.reason = "OK"
        self.headers = headers
        self._body = body
        self.closed = False

    async def stream(self, amt: int) -> AsyncIterator[bytes]:
        body, self._body = self._body, b""
        self.closed = True
        for start in range(0, len(body), amt):
            yield body[start : start + amt]

    async def read(self, amt: int | None = None) -> bytes:
        body = self._body[:amt] if amt is not None else self._body
        self._body = self._body[len(body) :]
        self.closed = not self._body
        return body

    async def drain_conn(self) -> None:
        self._body, self.closed = b"", True

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


def stale_copy(service: str, target: str) -> StoredResponse | None:
    try:
        found = cache.get(_key(service, target))
    except Exception as exc:  # a cache failure means no copy, not a different error
        logger.warning("could not read a stale copy: %s", exc)
        return None
    if found is None:
        return None
    copied_at, headers, body = found
    age = max(0, int(time.time() - copied_at))
    if age > settings.STALE_MAX_AGE:
        return None
    extra = [("X-Cache", "stale"), ("Age", str(age)), ("Warning", '110 - "Response is Stale"')]
    return StoredResponse(urllib3.HTTPHeaderDict([*headers, *extra]), body)


def reset() -> None:
    """Forget every copy (tests): new keys rather than a cache flush, which would empty a shared Redis."""
    global _generation
    with _lock:
        _next_copy.clear()
        _generation = f"-{uuid.uuid4().hex}"
