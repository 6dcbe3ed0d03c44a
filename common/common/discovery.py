"""Service discovery: where the instances of a service are, from one of three registries.

- ``static`` (the embedded default): the ``*_SERVICE_URL`` value itself, one URL or a comma-separated list.
  Nothing registers; the launcher (``up --scale``) writes the list.
- ``dns``: the host of the configured URL is resolved on every read. A plain name (a compose service, a
  Kubernetes headless service) gives one instance per A/AAAA address on the URL's port, through the system
  resolver (``getaddrinfo``: /etc/hosts and the platform's DNS, as the services' own connections would
  see them). A name starting with ``_`` (``http://_http._tcp.orders.shop.svc.cluster.local``) is an SRV
  name: one instance per target and port, asked with dnspython (the system resolver has no SRV lookup).
  Instances register with the platform (compose, Kubernetes), not with us.
- ``etcd``: a real distributed registry. Each instance writes one key,
  ``<prefix><service>/<instance id>`` = its :class:`Registration` as JSON, under a lease it keeps alive
  from a background thread. A clean stop deletes the key and revokes the lease; a crashed instance stops
  the keep-alive, and etcd drops the key when the lease's TTL runs out. Readers list the prefix, or watch
  it and see every put and delete.

Why requests against etcd's HTTP/JSON gateway rather than a client library: ``etcd3`` (python-etcd3) is
unmaintained and pins an old grpcio/protobuf; ``etcd3gw`` talks to the same JSON gateway but pulls in
OpenStack's futurist and pbr for five calls. The five calls used here (lease grant/keepalive/revoke, kv
put/range/deleterange, watch) are stable since etcd 3.4 under ``/v3/``.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import requests

logger = logging.getLogger(__name__)

BACKENDS = ("static", "dns", "etcd")
DEFAULT_PREFIX = "/shop/services/"


class DiscoveryError(Exception):
    """A registry could not be read or written (unreachable, refused, malformed answer)."""


@dataclass(frozen=True)
class Registration:
    """One instance, as the seed design describes it."""

    service: str
    instance_id: str
    address: str
    port: int
    health_url: str
    check_interval: float = 5.0
    check_timeout: float = 1.0

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Registration:
        data = json.loads(raw)
        return cls(
            service=str(data["service"]),
            instance_id=str(data["instance_id"]),
            address=str(data["address"]),
            port=int(data["port"]),
            health_url=str(data["health_url"]),
            check_interval=float(data.get("check_interval", 5.0)),
            check_timeout=float(data.get("check_timeout", 1.0)),
        )


def new_instance_id(service: str) -> str:
    return f"{service}-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def parse_urls(value: str) -> tuple[str, ...]:
    return tuple(url.strip().rstrip("/") for url in value.split(",") if url.strip())


class Registry(Protocol):
    def urls(self, service: str) -> Sequence[str]:
        """The service's instances now, as base URLs without a trailing slash (empty: none known)."""
        ...


# static -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StaticRegistry:
    configured: Mapping[str, str]  # service -> "*_SERVICE_URL" value

    def urls(self, service: str) -> Sequence[str]:
        return parse_urls(self.configured[service])


# DNS ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsRegistry:
    configured: Mapping[str, str]  # service -> URL whose host is the name to resolve
    nameserver: str = ""  # "host:port" for SRV lookups; empty: the system's resolv.conf
    timeout: float = 2.0

    def urls(self, service: str) -> Sequence[str]:
        found: list[str] = []
        for url in parse_urls(self.configured[service]):
            found += self.resolve(url)
        return found

    def resolve(self, url: str) -> list[str]:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if host.startswith("_"):
            return [f"{parts.scheme}://{_host(target)}:{port}" for target, port in self._srv(host)]
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise DiscoveryError(f"cannot resolve {host!r}: {exc}") from exc
        addresses = dict.fromkeys(str(info[4][0]) for info in infos)  # unique, in the resolver's order
        return [f"{parts.scheme}://{_host(address)}:{port}" for address in addresses]

    def _srv(self, name: str) -> list[tuple[str, int]]:
        import dns.exception
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=not self.nameserver)
        if self.nameserver:
            host, _, port = self.nameserver.rpartition(":")
            resolver.nameservers = [host]
            resolver.port = int(port)
        resolver.lifetime = self.timeout
        try:
            answer = resolver.resolve(name, "SRV")
        except dns.exception.DNSException as exc:
            raise DiscoveryError(f"cannot resolve SRV {name!r}: {exc}") from exc
        records = sorted(answer, key=lambda r: (r.priority, -r.weight))  # type: ignore[attr-defined]
        return [(r.target.to_text(omit_final_dot=True), int(r.port)) for r in records]  # type: ignore[attr-defined]


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# etcd ---------------------------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> str:
    """etcd's range_end for "every key starting with prefix": the prefix with its last byte plus one."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    key: str
    registration: Registration | None  # None for a delete


class EtcdRegistry:
    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.prefix = prefix
        self.timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = self._session.post(f"{self.url}/v3/{path}", json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise DiscoveryError(f"etcd at {self.url} unreachable: {exc}") from exc
        if answer.status_code != 200:
            raise DiscoveryError(f"etcd {path} answered {answer.status_code}: {answer.text[:200]}")
        result: dict[str, Any] = answer.json()
        return result

    def key(self, service: str, instance_id: str) -> str:
        return f"{self.prefix}{service}/{instance_id}"

    # writes
    def grant(self, ttl: int) -> str:
        return str(self._call("lease/grant", {"TTL": ttl})["ID"])

    def keepalive(self, lease: str) -> int:
        """Renew the lease; the TTL left, 0 when the lease is gone (expired or revoked)."""
        result = self._call("lease/keepalive", {"ID": lease}).get("result", {})
        return int(result.get("TTL", 0))

    def revoke(self, lease: str) -> None:
        self._call("lease/revoke", {"ID": lease})

    def put(self, registration: Registration, *, lease: str) -> None:
        key = self.key(registration.service, registration.instance_id)
        self._call("kv/put", {"key": _b64(key), "value": _b64(registration.to_json()), "lease": lease})

    def delete(self, service: str, instance_id: str) -> None:
        self._call("kv/deleterange", {"key": _b64(self.key(service, instance_id))})

    # reads
    def registrations(self, service: str) -> list[Registration]:
        prefix = f"{self.prefix}{service}/"
        result = self._call("kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        found = []
        for kv in result.get("kvs", []):
            try:
                found.append(Registration.from_json(_unb64(kv["value"])))
            except (ValueError, KeyError, TypeError):
                logger.warning("ignoring a malformed registration under %s", _unb64(kv.get("key", "")))
        return sorted(found, key=lambda r: r.instance_id)

    def urls(self, service: str) -> Sequence[str]:
        return [registration.url for registration in self.registrations(service)]

    def service_of(self, key: str) -> str:
        """The service a registration key belongs to ("" for a key outside the prefix)."""
        return key[len(self.prefix) :].split("/", 1)[0] if key.startswith(self.prefix) else ""

    def watch(
        self, service: str = "", *, stop: threading.Event, on_created: Callable[[], None] | None = None
    ) -> Iterator[WatchEvent]:
        """Every put and delete under the service's prefix (every service's, without one) from now on,
        until ``stop`` is set (checked whenever etcd sends something, at the latest on its progress
        notifications). ``on_created`` runs once etcd has set the watch up: a read made then misses
        nothing the watch will not report. A watch that ends without ``stop`` raises
        :class:`DiscoveryError`."""
        prefix = f"{self.prefix}{service}/" if service else self.prefix
        body = {"create_request": {"key": _b64(prefix), "range_end": _prefix_end(prefix), "progress_notify": True}}
        try:
            with self._session.post(
                f"{self.url}/v3/watch", json=body, stream=True, timeout=(self.timeout, None)
            ) as answer:
                for line in answer.iter_lines():
                    if stop.is_set():
                        return
                    if not line:
                        continue
                    result = json.loads(line).get("result", {})
                    if result.get("created") and on_created is not None:
                        on_created()
                    for event in result.get("events", []):
                        kv = event["kv"]
                        key = _unb64(kv["key"])
                        if event.get("type") == "DELETE":  # PUT is the enum's default, left out of the JSON
                            yield WatchEvent("delete", key, None)
                        else:
                            yield WatchEvent("put", key, Registration.from_json(_unb64(kv["value"])))
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise DiscoveryError(f"etcd watch at {self.url} failed: {exc}") from exc
        if not stop.is_set():  # etcd closed the stream (restart, compaction): the caller reconnects
            raise DiscoveryError(f"etcd watch at {self.url} ended")


class Registrar:
    """Keeps one instance registered in etcd: a lease of ``ttl`` seconds renewed every ``ttl / 3`` from a
    daemon thread. A keep-alive that finds the lease gone (etcd restarted, or this process was paused past
    the TTL) registers again under a new lease, so an instance never stays invisible while it runs."""

    def __init__(self, registry: EtcdRegistry, registration: Registration, *, ttl: int = 10) -> None:
        self.registry = registry
        self.registration = registration
        self.ttl = max(ttl, 2)
        self.lease = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Register, then keep the lease alive. With etcd unreachable it still starts: the keep-alive
        thread registers as soon as etcd answers."""
        try:
            self._register()
        except DiscoveryError as exc:
            logger.error("could not register %s yet: %s", self.registration.instance_id, exc)
        self._thread = threading.Thread(target=self._keep_alive, name="discovery-keepalive", daemon=True)
        self._thread.start()

    def _register(self) -> None:
        lease = self.registry.grant(self.ttl)
        self.registry.put(self.registration, lease=lease)
        self.lease = lease  # only once the key is written: a failed put is retried by the keep-alive
        logger.info("registered %s at %s (lease %s)", self.registration.instance_id, self.registration.url, self.lease)

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self.lease or self.registry.keepalive(self.lease) <= 0:
                    logger.warning("lease of %s expired; registering again", self.registration.instance_id)
                    self._register()
            except DiscoveryError as exc:  # etcd down: keep trying; the lease may still be alive when it's back
                logger.warning("discovery keep-alive failed: %s", exc)

    def pause(self) -> None:
        """Stop renewing without deregistering: what a crash looks like to etcd (tests)."""
        self._stop.set()
        if self._thread:
            self._thread.join()

    def stop(self) -> None:
        """A clean stop: the key is deleted and the lease revoked, so readers see it go at once."""
        self.pause()
        if not self.lease:
            return
        try:
            self.registry.delete(self.registration.service, self.registration.instance_id)
            self.registry.revoke(self.lease)
            logger.info("deregistered %s", self.registration.instance_id)
        except DiscoveryError as exc:  # the lease expires anyway
            logger.warning("could not deregister %s: %s", self.registration.instance_id, exc)


# choosing a backend ---------------------------------------------------------------------------------------


def make_registry(
    *, backend: str, configured: Mapping[str, str], etcd_url: str = "", etcd_prefix: str = DEFAULT_PREFIX,
    dns_server: str = "", timeout: float = 2.0,
) -> Registry:  # fmt: skip
    if backend == "static":
        return StaticRegistry(configured)
    if backend == "dns":
        return DnsRegistry(configured, nameserver=dns_server, timeout=timeout)
    if backend == "etcd":
        return EtcdRegistry(etcd_url, prefix=etcd_prefix, timeout=timeout)
    raise ValueError(f"DISCOVERY_BACKEND must be one of {', '.join(BACKENDS)}, not {backend!r}")


class ServiceInstances:
    """A service's instances through a registry, falling back to its configured URL(s) when the registry
    knows none: with etcd, a service that has not registered yet (it is still starting, or runs outside
    the launcher) is still reachable at its ``*_SERVICE_URL``. While the registry cannot be read, the
    instances it last listed stay in use."""

    def __init__(self, registry: Registry, service: str, *, fallback: str) -> None:
        self.registry = registry
        self.service = service
        self.fallback = parse_urls(fallback)
        self._last: Sequence[str] = ()
        self._checks: dict[str, tuple[float, float]] = {}

    def urls(self) -> Sequence[str]:
        try:
            if isinstance(self.registry, EtcdRegistry):
                registrations = self.registry.registrations(self.service)
                found: Sequence[str] = [r.url for r in registrations]
                self._checks = {r.url: (r.check_interval, r.check_timeout) for r in registrations}
            else:
                found = self.registry.urls(self.service)
        except DiscoveryError as exc:
            logger.warning("discovery of %s failed, keeping the instances known so far: %s", self.service, exc)
            return self._last or self.fallback
        self._last = found
        return found or self.fallback

    def checks(self) -> Mapping[str, tuple[float, float]]:
        """The (check interval, check timeout) each instance registered, by URL, as of the last
        :meth:`urls` (etcd only; an instance missing here is checked with the reader's settings)."""
        return self._checks
