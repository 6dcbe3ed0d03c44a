"""Calls to the services: one keep-alive connection pool per service, shared by a worker's threads.

urllib3 directly (not requests): a request through the gateway should cost little more than the service's
own work, and requests' per-call overhead is several times urllib3's (see PERFORMANCE.md).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import urllib3
from django.conf import settings
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from common.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

CHUNK_SIZE = 64 * 1024
# A pooled connection the service closed just as it was reused fails before anything was processed; a
# safe request is then retried once on a fresh connection instead of failing the client.
_RETRIED_ONCE = frozenset({"GET", "HEAD", "OPTIONS"})


@functools.cache
def pool_manager() -> urllib3.PoolManager:
    return urllib3.PoolManager(num_pools=8, maxsize=settings.UPSTREAM_POOL_SIZE, block=False, retries=False)


@functools.cache
def _origin(base_url: str) -> tuple[str, str, int | None]:
    url = urllib3.util.parse_url(base_url)
    return url.scheme or "http", url.host or "", url.port


def connection_pool(base_url: str) -> HTTPConnectionPool:
    scheme, host, port = _origin(base_url)
    return pool_manager().connection_from_host(host, port, scheme)


@functools.cache
def timeout(connect: float, read: float) -> urllib3.Timeout:
    return urllib3.Timeout(connect=connect, read=read)


def send(
    service: str,
    method: str,
    target: str,
    *,
    headers: dict[str, str],
    body: bytes | None,
    connect_timeout: float,
    read_timeout: float,
) -> urllib3.BaseHTTPResponse:
    """Send the request and return the response with its body still unread (stream it, then
    :class:`UpstreamBody` releases the connection). Failures raise the upstream errors of
    :mod:`common.errors`: 503 when nothing reached the service, 504 when it did not answer in time, 502
    when the exchange broke."""
    pool = connection_pool(settings.UPSTREAMS[service])
    attempts = 2 if method in _RETRIED_ONCE else 1
    for attempt in range(1, attempts + 1):
        try:
            return pool.urlopen(
                method,
                target,
                body=body,
                headers=headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                timeout=timeout(connect_timeout, read_timeout),
                preload_content=False,
                decode_content=False,
            )
        except (NewConnectionError, ConnectTimeoutError) as exc:  # nothing was sent
            raise UpstreamUnavailable(details={"service": service}) from exc
        except ReadTimeoutError as exc:
            raise UpstreamTimeout(details={"service": service}) from exc
        except ProtocolError as exc:
            if attempt < attempts:
                continue
            raise UpstreamError(details={"service": service}) from exc
        except HTTPError as exc:
            raise UpstreamError(details={"service": service}) from exc
    raise AssertionError("unreachable")  # pragma: no cover


class UpstreamBody:
    """The service's response body as an iterable for StreamingHttpResponse, which calls ``close`` when
    the client has it (or went away): a fully read connection goes back to the pool, a partly read one is
    closed, since what is left of the body would be taken for the next response."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        return self._response.stream(CHUNK_SIZE, decode_content=False)

    def close(self) -> None:
        if not self._response.closed:
            self._response.close()
        self._response.release_conn()
