"""The gateway's own runtime configuration, read on the hot path (rate limits, breakers).

Each worker process keeps the current version's values in memory; :func:`value` is a dict lookup and
never touches the database or the network. A daemon thread per worker polls the shared version marker
(the highest ``ConfigVersion.version`` of this gateway's service and profile: one indexed query of an
integer in the gateway's own database) every ``CONFIG_POLL_INTERVAL`` seconds and loads the values only
when it moved. So a saved version is in use in every worker at most ``CONFIG_POLL_INTERVAL`` seconds
(plus one query) after it committed, without a restart. Workers do not consume ``config.changed``: the
marker already is shared by all workers and replicas of the gateway, and a queue per worker process
would be needed otherwise.

If the database cannot be read, the worker keeps the last version it loaded (or, before any, the
settings' values: python-decouple stays the bootstrap layer) and tries again at the next poll. Values are
checked against the schema again when loaded; a value that fails is dropped (the setting applies).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection

from configcenter.schema import check_value

logger = logging.getLogger(__name__)

_values: dict[str, Any] = {}
_version = 0
_healthy = True
_lock = threading.Lock()
_started = False


def value(key: str) -> Any | None:
    """The current value of ``key`` for this gateway, or None when the config center has none (the caller
    then uses its setting)."""
    if not _started:
        start()
    return _values.get(key)


def current() -> tuple[int, dict[str, Any]]:
    return _version, dict(_values)


def refresh() -> bool:
    """Poll the marker once and load a newer version; False when the database could not be read."""
    global _values, _version, _healthy
    from configcenter.selectors import current_version, current_version_number

    service, profile = settings.SERVICE_NAME, settings.CONFIG_PROFILE
    try:
        if current_version_number(service, profile) != _version:
            found = current_version(service, profile)
            if found is not None:
                _values = _usable(found.values)
                _version = found.version
                logger.info("config center: %s/%s version %s in use", service, profile, found.version)
    except Exception as exc:  # any database failure: keep the last good version
        if _healthy:
            logger.warning("config center unreadable, keeping version %s: %s", _version, exc)
        _healthy = False
        connection.close()
        return False
    if not _healthy:
        logger.info("config center readable again")
    _healthy = True
    return True


def reset() -> None:
    """Forget the loaded version (tests)."""
    global _values, _version, _healthy
    _values, _version, _healthy = {}, 0, True


def _usable(values: dict[str, Any]) -> dict[str, Any]:
    kept = {}
    for key, item in values.items():
        problem = check_value(key, item)
        if problem:
            logger.warning("config center: ignoring %s=%r: %s", key, item, problem)
        else:
            kept[key] = item
    return kept


def start() -> None:
    """Load the current version and start this worker's poller, once. The gateway's ASGI application calls
    it as a worker loads it (gateway/asgi.py): the first load reads the database, which the event loop's
    thread must not do while it serves; elsewhere the first :func:`value` does."""
    global _started
    if settings.CONFIG_POLL_INTERVAL <= 0:  # disabled (the proxy's unit tests): settings only
        return
    with _lock:
        if _started:
            return
        # The first load on the caller's thread, once per worker, so its first requests (which wait on the
        # lock meanwhile) already use the current version. gunicorn loads the application in each worker
        # (no --preload): one poller each.
        refresh()
        threading.Thread(target=_poll_forever, name="config-poll", daemon=True).start()
        _started = True


def _poll_forever() -> None:
    while settings.CONFIG_POLL_INTERVAL > 0:
        time.sleep(settings.CONFIG_POLL_INTERVAL)
        refresh()
        close_old_connections()  # honours CONN_MAX_AGE: a persistent connection stays, else it closes
