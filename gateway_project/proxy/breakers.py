"""The gateway's circuit breakers: one per upstream service, wired to the gateway's settings and its config
center. The state machine and its Redis-shared state are common/common/breakers.py, shared with the
service-to-service client.

- ``BREAKER_FAILURES`` consecutive failures open a service's breaker; the gateway then answers 503
  ``upstream_unavailable`` with Retry-After for ``BREAKER_RESET_TIMEOUT`` seconds; then at most
  ``BREAKER_HALF_OPEN_PROBES`` calls probe at a time. The config center's ``breaker.failures`` and
  ``breaker.reset_timeout`` override the first two, read on each use (an in-memory lookup), so a saved
  version applies to the breakers that already exist, without a restart.
- With ``REDIS_URL`` set (``BREAKER_REDIS_URL``), states are shared by every worker and replica under
  ``<BREAKER_REDIS_PREFIX>:<service>`` and read every ``BREAKER_SYNC_INTERVAL`` seconds; otherwise each
  worker process keeps its own.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from django.conf import settings

from common import breakers as common_breakers
from common.breakers import Breaker, BreakerOpen, BreakerSync, SharedStates
from configcenter import runtime as runtime_config

__all__ = ["Breaker", "BreakerOpen", "breaker", "reset", "shared_states", "states", "store_status", "sync_once"]

_breakers: dict[str, Breaker] = {}
_registry_lock = threading.Lock()


@functools.cache
def _shared_states(url: str, prefix: str) -> SharedStates:
    return SharedStates(url, prefix)


def shared_states() -> SharedStates | None:
    url = settings.BREAKER_REDIS_URL
    return _shared_states(url, settings.BREAKER_REDIS_PREFIX) if url else None


def _failures() -> int:
    return int(runtime_config.value("breaker.failures") or settings.BREAKER_FAILURES)


def _reset_timeout() -> float:
    return float(runtime_config.value("breaker.reset_timeout") or settings.BREAKER_RESET_TIMEOUT)


def sync_once() -> None:
    common_breakers.sync_once(shared_states(), dict(_breakers))


_sync = BreakerSync(name="breaker-sync", sync=sync_once, interval=lambda: float(settings.BREAKER_SYNC_INTERVAL))


def breaker(service: str) -> Breaker:
    found = _breakers.get(service)
    if found is not None:
        return found
    with _registry_lock:
        found = _breakers.get(service)
        if found is None:
            shared = shared_states()
            found = _breakers[service] = Breaker(
                service,
                failures=_failures,
                reset_timeout=_reset_timeout,
                probes=settings.BREAKER_HALF_OPEN_PROBES,
                shared=shared,
            )
            if shared is not None:
                _sync.start()
    return found


def states() -> dict[str, str]:
    """Each service's breaker: ``closed``, ``open`` or ``half_open`` (for /health and metrics)."""
    return {service: breaker(service).state for service in settings.UPSTREAMS}


def store_status() -> dict[str, Any]:
    shared = shared_states()
    if shared is None:
        return {"store": "local"}
    return {"store": "redis", "status": "ok" if shared.healthy() else "unavailable"}


def reset() -> None:
    """Forget every breaker (tests)."""
    with _registry_lock:
        _breakers.clear()
    _shared_states.cache_clear()
