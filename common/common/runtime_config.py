"""Runtime configuration from the gateway's config center, for the services.

``get("breaker.failures", settings.SOME_DEFAULT)`` answers from memory. The values of this service
(``SERVICE_NAME``) and ``CONFIG_PROFILE`` are fetched from ``CONFIG_CENTER_URL`` (``GET
/config/<service>/<profile>/`` with a service assertion for the gateway) on first use, then revalidated with
``If-None-Match`` when ``CONFIG_TTL`` seconds have passed (a 304 costs no body), in a background thread so
no request waits for it. A ``config.changed`` event for this service (:func:`on_config_changed`, listed in
the service's EVENT_HANDLERS) makes the process that handles it refetch at once and leaves the new version
number in the Django cache, which every process checks at most once per ``CONFIG_MARKER_INTERVAL`` seconds:
with a shared cache (Redis) a change reaches every web process within that interval; with the per-process
cache of embedded mode, within the TTL. If the config center cannot be reached, the last good version stays
in use (and, before any, the caller's default: python-decouple's settings stay the bootstrap layer); the
next try is after ``CONFIG_RETRY_INTERVAL`` seconds.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.cache import cache

from common.events import Event
from common.internal_auth import HEADER as ASSERTION_HEADER
from common.internal_auth import mint_assertion

logger = logging.getLogger(__name__)

MARKER_KEY = "runtime-config:version"


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
    ) -> None:
        self.url = url.rstrip("/")
        self.service = service
        self.profile = profile
        self._secret = secret
        self._ttl = ttl
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._marker_interval = marker_interval
        self.values: dict[str, Any] = {}
        self.version = 0
        self.etag = ""
        self.last_status = 0  # of the last fetch: 200, 304 (unchanged), or 0 when it failed
        self._loaded = False
        self._tried = False
        self._expires_at = 0.0  # time.monotonic()
        self._marker_check_at = 0.0
        self._refreshing = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        now = time.monotonic()
        if now >= self._marker_check_at:
            self._check_marker(now)
        if now >= self._expires_at:
            if not self._tried:
                self.refresh()  # the first use waits (at most the timeout) so it sees the current values
            else:
                self._refresh_in_background()
        return self.values.get(key, default)

    def refresh(self) -> bool:
        """Fetch or revalidate now; False (and the last good values kept) when that failed."""
        self._tried = True
        try:
            status, etag, body = self._fetch()
            self.last_status = status
            if status == 200:
                document = json.loads(body)
                values = document["values"]
                if not isinstance(values, dict):
                    raise ValueError("values is not an object")
                self.values, self.version, self.etag = values, int(document["version"]), etag
                self._loaded = True
            elif status != 304:
                raise ValueError(f"the config center answered {status}")
        except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
            self.last_status = 0
            logger.warning(
                "config center unreachable, keeping version %s: %s", self.version if self._loaded else "none", exc
            )
            self._expires_at = time.monotonic() + min(self._retry_interval, self._ttl)
            return False
        self._expires_at = time.monotonic() + self._ttl
        return True

    def invalidate(self) -> None:
        """Refetch at the next use (a config.changed event)."""
        self._expires_at = 0.0

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

    def _refresh_in_background(self) -> None:
        if not self._refreshing.acquire(blocking=False):
            return  # one refresh at a time; the others keep answering from memory
        self._expires_at = time.monotonic() + self._timeout + 1  # no second thread while this one runs

        def run() -> None:
            try:
                self.refresh()
            finally:
                self._refreshing.release()

        threading.Thread(target=run, name="runtime-config-refresh", daemon=True).start()

    def _check_marker(self, now: float) -> None:
        self._marker_check_at = now + self._marker_interval
        try:
            announced = cache.get(MARKER_KEY)
        except Exception:  # a cache outage only loses the shortcut; the TTL still applies
            return
        if isinstance(announced, int) and announced > self.version:
            self.invalidate()


_client: RuntimeConfig | None = None
_client_lock = threading.Lock()


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
    """Forget the client (tests)."""
    global _client
    _client = None


def on_config_changed(event: Event) -> None:
    """The ``config.changed`` handler: a new version for this service and profile is fetched at once here,
    and announced to the service's other processes through the cache."""
    config = client()
    if event.data.get("service") != config.service or event.data.get("profile") != config.profile:
        return
    try:
        cache.set(MARKER_KEY, int(event.data.get("version", 0)), timeout=None)
    except Exception:  # the other processes fall back on the TTL
        logger.warning("could not announce config version %s in the cache", event.data.get("version"))
    config.invalidate()
    config.refresh()
