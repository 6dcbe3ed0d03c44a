"""The gateway's balancers: one per upstream service and worker process, wired to the gateway's settings.
The balancing itself (instances, policies, active checks, passive ejection, the etcd watch) is
common/common/balancing.py, shared with the service-to-service client.

- Instances come from ``*_SERVICE_URL`` (``UPSTREAMS``: one URL or a comma-separated list), or from service
  discovery (``DISCOVERY_BACKEND``: DNS, etcd) through :func:`instance_source`. They are re-read every
  ``UPSTREAM_CHECK_INTERVAL``; with etcd, one daemon thread per worker process also watches the registry's
  prefix and re-reads a service as soon as one of its keys is put or deleted. Requests never wait on etcd.
- Health: every ``UPSTREAM_CHECK_INTERVAL`` (or the interval an instance registered), with
  ``UPSTREAM_CHECK_TIMEOUT`` (or the registered timeout); a connection error on a real call ejects the
  instance for ``UPSTREAM_EJECT_SECONDS`` (proxy/upstream.py).
- Policy: ``LOAD_BALANCER_POLICY`` (``least_outstanding`` by default, ``round_robin``, ``random``).
"""

from __future__ import annotations

import threading

from django.conf import settings

from common import discovery
from common.balancing import Balancer, HealthChecker, Instance, InstanceSource, RegistryWatcher, StaticInstances

__all__ = ["Balancer", "Instance", "balancer", "balancers", "instance_source", "reset"]


def instance_source(service: str) -> InstanceSource:
    """The one seam for service discovery (``DISCOVERY_BACKEND``, common/common/discovery.py)."""
    if settings.DISCOVERY_BACKEND == "static":
        return StaticInstances(discovery.parse_urls(settings.UPSTREAMS[service]))
    registry = discovery.make_registry(
        backend=settings.DISCOVERY_BACKEND,
        configured=settings.UPSTREAMS,
        etcd_url=settings.ETCD_URL,
        etcd_prefix=settings.ETCD_PREFIX,
        dns_server=settings.DISCOVERY_DNS_SERVER,
        timeout=settings.UPSTREAM_CHECK_TIMEOUT,
    )
    return discovery.ServiceInstances(registry, service, fallback=settings.UPSTREAMS[service])


# One balancer per service and worker process, created on first use; a new configuration (tests change
# settings) makes a new one.
_balancers: dict[tuple[str, str, str, str], Balancer] = {}
_registry_lock = threading.Lock()


def _current() -> list[Balancer]:
    with _registry_lock:
        return list(_balancers.values())


_checker = HealthChecker(
    name="upstream-health",
    balancers=_current,
    interval=lambda: float(settings.UPSTREAM_CHECK_INTERVAL),
    timeout=lambda: float(settings.UPSTREAM_CHECK_TIMEOUT),
)
_watcher = RegistryWatcher(balancers=_current, checker=_checker)


def balancer(service: str) -> Balancer:
    key = (service, settings.UPSTREAMS[service], settings.LOAD_BALANCER_POLICY, settings.DISCOVERY_BACKEND)
    found = _balancers.get(key)
    if found is not None:
        return found
    with _registry_lock:
        found = _balancers.get(key)
        if found is None:
            found = Balancer(service, instance_source(service), settings.LOAD_BALANCER_POLICY)
            for old in [k for k in _balancers if k[0] == service]:
                del _balancers[old]
            _balancers[key] = found
    # started in the process that uses the balancers, so a gunicorn worker forked after import gets its own
    _checker.start()
    if settings.DISCOVERY_BACKEND == "etcd":
        _watcher.follow(settings.ETCD_URL, settings.ETCD_PREFIX, timeout=settings.UPSTREAM_CHECK_TIMEOUT)
    return found


def balancers() -> list[Balancer]:
    return [balancer(service) for service in settings.UPSTREAMS]


def reset() -> None:
    """Forget every balancer (tests)."""
    with _registry_lock:
        _balancers.clear()
