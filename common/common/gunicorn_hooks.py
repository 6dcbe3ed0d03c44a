"""gunicorn server hooks of the services (``gunicorn -c python:common.gunicorn_hooks``): they register the
instance with service discovery, and drop a dead worker's live gauges from the multiprocess metrics. Its
module-level names are read as gunicorn settings, hence no ``config``.

The discovery hooks run in the master, once per instance (never per worker: workers come and go, the
instance stays), and only for ``DISCOVERY_BACKEND=etcd``; static and DNS discovery are configured outside the process.
``when_ready`` registers once the sockets listen, ``on_exit`` deregisters on a clean stop (SIGTERM or
SIGINT: gunicorn's graceful shutdown runs it). A SIGKILLed or crashed master never runs ``on_exit``; its
key goes when its lease expires (``DISCOVERY_TTL``).

Read from the environment, since the master loads no Django settings: ``DISCOVERY_SERVICE`` (the name
callers look the service up by; unset: no registration), ``ETCD_URL``, ``ETCD_PREFIX``, ``DISCOVERY_TTL``,
``DISCOVERY_HEALTH_PATH``, ``DISCOVERY_CHECK_INTERVAL``, ``DISCOVERY_CHECK_TIMEOUT`` and
``DISCOVERY_ADDRESS`` (the address to advertise when the bind address is a wildcard).
"""

from __future__ import annotations

import os
from typing import Any

import decouple

from common import discovery

_registrar: discovery.Registrar | None = None


def _bound_address(server: Any) -> tuple[str, int]:
    host, port = server.LISTENERS[0].sock.getsockname()[:2]
    return str(host), int(port)


def when_ready(server: Any) -> None:
    global _registrar
    service = decouple.config("DISCOVERY_SERVICE", default="")
    if decouple.config("DISCOVERY_BACKEND", default="static") != "etcd" or not service:
        return
    host, port = _bound_address(server)
    address = decouple.config("DISCOVERY_ADDRESS", default="") or host
    if address in ("0.0.0.0", "::"):  # noqa: S104 (comparing, not binding)
        raise RuntimeError("bound to a wildcard address: set DISCOVERY_ADDRESS to the address callers use")
    registration = discovery.Registration(
        service=service,
        instance_id=discovery.new_instance_id(service),
        address=address,
        port=port,
        health_url=f"http://{address}:{port}{decouple.config('DISCOVERY_HEALTH_PATH', default='/health/')}",
        check_interval=decouple.config("DISCOVERY_CHECK_INTERVAL", default=5.0, cast=float),
        check_timeout=decouple.config("DISCOVERY_CHECK_TIMEOUT", default=1.0, cast=float),
    )
    registry = discovery.EtcdRegistry(
        decouple.config("ETCD_URL", default="http://127.0.0.1:2379"),
        prefix=decouple.config("ETCD_PREFIX", default=discovery.DEFAULT_PREFIX),
    )
    _registrar = discovery.Registrar(registry, registration, ttl=decouple.config("DISCOVERY_TTL", default=10, cast=int))
    # With etcd down this serves anyway (callers fall back to the configured URL) and registers once
    # etcd answers.
    _registrar.start()


def on_exit(server: Any) -> None:
    if _registrar is not None:
        _registrar.stop()


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges (e.g. ``runtime_config_version``, one sample per process) go; its counters
    and histograms stay, so totals never run backwards. Only with prometheus_client's multiprocess folder."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
