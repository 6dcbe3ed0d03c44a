"""Runtime configuration from the gateway's config center, for the services.

``get("breaker.failures", settings.SOME_DEFAULT)`` answers from memory. The values of this service
(``SERVICE_NAME``) and ``CONFIG_PROFILE`` are fetched from ``CONFIG_CENTER_URL`` (``GET
/config/<service>/<profile>/`` with a service assertion for the gateway) on a process's first read, which
waits for it (at most ``CONFIG_TIMEOUT``). From then on a daemon thread per process (the *watcher*) keeps
them current, so no request ever waits for the config center:

- **On a change.** Saving a version in the config center publishes ``config.changed`` (through the
  gateway's outbox and the events exchange). Each service that reads its configuration consumes it
  (:func:`on_config_changed` in its ``EVENT_HANDLERS``; the launcher runs an event worker per service) and
  *announces* the new version number in a store that all of that service's processes share: with Redis
  (``REDIS_URL``) the Django cache; in embedded mode, whose cache is per process, a file-based Django
  cache in ``CONFIG_MARKER_DIR`` (under the service's var/ folder). Every process's watcher reads that
  marker every ``CONFIG_MARKER_INTERVAL`` seconds (one small file read or one Redis GET) and refetches when
  it moved to a version other than the one it holds. So a saved version is in use in every process that
  reads it (the web workers of every instance, the order saga's sweeper) within relay poll (0.2 s) +
  broker poll (0.2 s, embedded) + ``CONFIG_MARKER_INTERVAL`` (1 s) + one fetch: at most about 1.5 s, 1.0 s
  measured end to end (tests/test_runtime_config_events.py holds it to 5 s; the TTL is 30 s).
- **The TTL as a backstop.** Whatever happens to the event (the worker down, a broker outage, a marker
  store that cannot be written: the event is then retried and dead-lettered like any other), the watcher
  also revalidates after ``CONFIG_TTL`` seconds with ``If-None-Match`` (a 304 costs no body).
- **Last good version.** If the config center cannot be reached or answers nonsense, the values last
  fetched stay in use (before any, the caller's default: python-decouple's settings stay the bootstrap
  layer), and the next try is ``CONFIG_RETRY_INTERVAL`` seconds later.

Why a marker the processes read rather than the event reaching each process: a broker queue is consumed by
one of its consumers, so every gunicorn worker would need a queue of its own (created and deleted with the
worker, one more broker consumer each) to hear an event; one consumer per service plus a shared marker
costs one process and a read per second per process. Why an event worker per service rather than the
service's outbox relay or sweeper consuming: those are plain management-command loops, and consuming there
would mean re-implementing what Celery's worker and ``common.tasks`` already do for every other event
(decoding, acknowledgement after the effect, the inbox, retries with backoff, dead letters). The launcher
runs the order and payment services' workers with the solo pool: one process each, enough for an event
that comes when an operator saves.

The marker only says "version N exists": it is acted on when it changes, so a stale marker (the gateway's
database reset while the marker stayed) costs one extra fetch, never a loop. Each process exports the
version it holds as the gauge ``runtime_config_version`` (per process in the launcher's multiprocess
metrics), so "is my change live everywhere?" is one scrape of ``/metrics``.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
import weakref
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.cache.backends.filebased import FileBasedCache
from prometheus_client import Gauge

from common.events import Event
from common.internal_auth import HEADER as ASSERTION_HEADER
from common.internal_auth import mint_assertion

logger = logging.getLogger(__name__)

MARKER_KEY = "runtime-config:version"  # then ":<profile>"

# Not in a registry: in multiprocess mode (the launcher) every process writes its value to the metrics
# folder, and /metrics reports each live process's with a ``pid`` label.
CONFIG_VERSION = Gauge(
    "runtime_config_version",
    "The config center version this process uses (0: none fetched yet, the settings apply).",
    ["service", "profile"],
    multiprocess_mode="liveall",
    registry=None,
)


def marker_key(profile: str) -> str:
    return f"{MARKER_KEY}:{profile}"


def marker_store() -> BaseCache:
    """Where :func:`on_config_changed` announces a version to all of this service's processes:
    ``CONFIG_MARKER_DIR`` when set (embedded mode: files, since its default cache is per process), else the
    default cache (Redis, shared)."""
    directory = str(getattr(settings, "CONFIG_MARKER_DIR", "") or "")
    if directory:
        return FileBasedCache(directory, {"TIMEOUT": None})
    return caches["default"]


class RuntimeConfig:
    def __init__(
        self,
        *,
        url: str,
        service: str,
        profile: str,
        secret: str,
        ttl: float = 30.0,
        timeout: float = 1.0,
        retry_interval: float = 5.0,
        marker_interval: float = 1.0,
        store: BaseCache | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.service = service
        self.profile = profile
        self._secret = secret
        self._ttl = ttl
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._marker_interval = max(marker_interval, 0.05)  # 0 would make the watcher spin
        self._store = store
        self.values: dict[str, Any] = {}
        self.version = 0
        self.etag = ""
        self.last_status = 0  # of the last fetch: 200, 304 (unchanged), or 0 when it failed
        self.started = False  # this process has read its configuration (and runs the watcher)
        self._loaded = False
        self._expires_at = 0.0  # time.monotonic()
        self._seen_marker: int | None = None
        self._start_lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self._stop = threading.Event()
        _instances.add(self)

    def after_fork_in_child(self) -> None:
        """A forked child has none of its parent's threads: without this its copy would never be refreshed
        (the watcher is gone) and a lock the watcher held at the fork would stay taken for ever. The child
        keeps the inherited values and starts its own watcher at its next read."""
        self._start_lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self._stop = threading.Event()
        self.started = False

    def get(self, key: str, default: Any = None) -> Any:
        if not self.started:
            self._start()
        return self.values.get(key, default)

    def refresh(self) -> bool:
        """Fetch or revalidate now; False (and the last good values kept) when that failed."""
        with self._fetch_lock:  # the watcher, the event handler and a first read never fetch twice at once
            try:
                status, etag, body = self._fetch()
                self.last_status = status
                if status == 200:
                    document = json.loads(body)
                    values, version = document["values"], int(document["version"])
                    if not isinstance(values, dict):
                        raise ValueError("values is not an object")
                    # One reference swap: a concurrent get() sees the old or the new values, never a mix.
                    self.values, self.version, self.etag = values, version, etag
                    self._loaded = True
                    CONFIG_VERSION.labels(self.service, self.profile).set(version)
                    logger.info("config center: %s/%s version %s in use", self.service, self.profile, version)
                elif status != 304:
                    raise ValueError(f"the config center answered {status}")
            except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as exc:
                self.last_status = 0
                logger.warning(
                    "config center unreachable, keeping version %s: %s", self.version if self._loaded else "none", exc
                )
                self._expires_at = time.monotonic() + min(self._retry_interval, self._ttl)
                return False
            self._expires_at = time.monotonic() + self._ttl
            return True

    def invalidate(self) -> None:
        """Refetch at the watcher's next step."""
        self._expires_at = 0.0

    def poll(self) -> bool:
        """One step of the watcher: refetch when another version was announced or the TTL ran out. True
        when it fetched."""
        if self._announced_change() or time.monotonic() >= self._expires_at:
            self.refresh()
            return True
        return False

    def announce(self, version: int) -> None:
        """Tell every process of this service that ``version`` exists (the event worker calls this). Last
        writer wins, so versions that restart at 1 (a new config center database) are announced too."""
        self.store.set(marker_key(self.profile), version, timeout=None)

    def stop(self) -> None:
        self._stop.set()

    @property
    def store(self) -> BaseCache:
        if self._store is None:
            self._store = marker_store()
        return self._store

    def _start(self) -> None:
        with self._start_lock:
            if self.started:
                return
            # The marker as it is now: only a later change is news (the fetch below gets the current version).
            self._seen_marker = self._read_marker()
            self.refresh()
            threading.Thread(target=self._watch, name="runtime-config-watch", daemon=True).start()
            self.started = True

    def _watch(self) -> None:
        while not self._stop.wait(self._marker_interval):
            try:
                self.poll()
            except Exception:  # never let the watcher die: the values in memory stay, the next step retries
                logger.exception("runtime config watcher step failed")

    def _read_marker(self) -> int | None:
        try:
            announced = self.store.get(marker_key(self.profile))
        except Exception:  # a store outage only loses the shortcut; the TTL still applies
            return self._seen_marker
        return announced if isinstance(announced, int) and not isinstance(announced, bool) else None

    def _announced_change(self) -> bool:
        announced = self._read_marker()
        if announced is None or announced == self._seen_marker:
            return False
        self._seen_marker = announced
        return announced != self.version  # not our version: newer, or the center started again (a 304 if not)

    def _fetch(self) -> tuple[int, str, bytes]:
        parts = urlsplit(self.url)
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(parts.netloc, timeout=self._timeout)
        headers = {
            ASSERTION_HEADER: mint_assertion(issuer=self.service, audience="gateway", secret=self._secret),
            "Accept": "application/json",
        }
        if self.etag and self._loaded:
            headers["If-None-Match"] = self.etag
        try:
            connection.request("GET", f"{parts.path}/config/{self.service}/{self.profile}/", headers=headers)
            response = connection.getresponse()
            return response.status, response.headers.get("ETag", ""), response.read()
        finally:
            connection.close()


_client: RuntimeConfig | None = None
_client_lock = threading.Lock()
_instances: weakref.WeakSet[RuntimeConfig] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Nothing forks after reading its configuration today (gunicorn without --preload, Celery's parent never
    # reads it), but a preloading server or a start-up hook would, and then every child would be stuck.
    global _client_lock
    _client_lock = threading.Lock()
    for instance in list(_instances):
        instance.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def client() -> RuntimeConfig:
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = RuntimeConfig(
                    url=getattr(settings, "CONFIG_CENTER_URL", "http://127.0.0.1:8000"),
                    service=settings.SERVICE_NAME,
                    profile=getattr(settings, "CONFIG_PROFILE", "default"),
                    secret=settings.INTERNAL_AUTH_SECRET,
                    ttl=float(getattr(settings, "CONFIG_TTL", 30.0)),
                    timeout=float(getattr(settings, "CONFIG_TIMEOUT", 1.0)),
                    retry_interval=float(getattr(settings, "CONFIG_RETRY_INTERVAL", 5.0)),
                    marker_interval=float(getattr(settings, "CONFIG_MARKER_INTERVAL", 1.0)),
                )
    return _client


def get(key: str, default: Any = None) -> Any:
    """The config center's value of ``key`` for this service, else ``default`` (usually a setting)."""
    return client().get(key, default)


def reset() -> None:
    """Forget the client and stop its watcher (tests)."""
    global _client
    with _client_lock:
        if _client is not None:
            _client.stop()
        _client = None


def on_config_changed(event: Event) -> None:
    """The ``config.changed`` handler: announce the new version of this service and profile to all of the
    service's processes (the marker their watchers read), and fetch it at once here if this process reads
    its configuration. A store that cannot be written raises: the event is retried, then dead-lettered."""
    config = client()
    if event.data.get("service") != config.service or event.data.get("profile") != config.profile:
        return
    version = event.data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        logger.warning("config.changed %s without a valid version (%r): ignored, the TTL applies", event.id, version)
        return
    config.announce(version)
    if config.started:
        config.refresh()
