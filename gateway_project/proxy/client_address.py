"""The client's address, as rate limits, the forwarded X-Forwarded-For and the access log see it; and the
scheme it used, forwarded as X-Forwarded-Proto, under the same trust.

Without proxies of our own in front (``TRUSTED_PROXY_COUNT=0``, the default) it is the socket's peer:
anything a client writes in ``X-Forwarded-For`` is ignored, so a spoofed header never buys a fresh rate
limit quota. Behind N trusted reverse proxies, each appends the address it received the request from, so
the right-most N-1 hops of the header and the socket's peer are ours, and the hop before them is the
client's; what lies further left was written by the client and is never believed. When the header has
fewer hops than that (a request that did not come through all the proxies), the socket's peer is used,
as Werkzeug's ProxyFix does. Setting ``TRUSTED_PROXY_COUNT`` is only safe when the gateway cannot be
reached except through those proxies.

The scheme likewise: without trusted proxies it is the socket's (gunicorn is told to trust no peer's
scheme headers: gunicorn.conf.py ``forwarded_allow_ips``), whatever ``X-Forwarded-Proto`` says; behind them
it is the right-most ``X-Forwarded-Proto`` value, the one the proxy nearest the gateway set (a proxy that
terminates TLS must set it, replacing or appending to the client's), if it is ``http`` or ``https``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from django.conf import settings

_CACHE_KEY = "proxy.client_address"


def client_address(environ: Mapping[str, Any]) -> str:
    """The client's IP address ('' if the server gave none), computed once per request."""
    cached = environ.get(_CACHE_KEY)
    if cached is None:
        cached = _resolve(environ)
        if isinstance(environ, dict):
            environ[_CACHE_KEY] = cached
    return cached


def forwarded_proto(environ: Mapping[str, Any]) -> str:
    """``http`` or ``https``: how the client reached the gateway (or the first of our proxies)."""
    scheme: str = environ.get("wsgi.url_scheme", "http")
    trusted: int = settings.TRUSTED_PROXY_COUNT
    # A request without the hops of every trusted proxy did not come through them all (see _resolve): its
    # X-Forwarded-Proto may be the client's own.
    if trusted <= 0 or len(_forwarded_for_hops(environ)) < trusted:
        return scheme
    proto = environ.get("HTTP_X_FORWARDED_PROTO", "").rpartition(",")[2].strip().lower()
    return proto if proto in ("http", "https") else scheme


def _forwarded_for_hops(environ: Mapping[str, Any]) -> list[str]:
    # Several X-Forwarded-For lines arrive joined by commas (WSGI), in the order they were sent.
    hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    return [hop for hop in hops if hop]


def _resolve(environ: Mapping[str, Any]) -> str:
    peer: str = environ.get("REMOTE_ADDR", "")
    trusted: int = settings.TRUSTED_PROXY_COUNT
    if trusted <= 0:
        return peer
    hops = _forwarded_for_hops(environ)
    if len(hops) < trusted:
        return peer
    candidate = hops[-trusted]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return peer  # a trusted proxy never writes anything else: the header is not what it seems


def rate_limit_identity(address: str) -> str:
    """What a per-address limit counts: the address itself for IPv4, its /64 network for IPv6, where one
    subscriber is given a whole /64 and could otherwise step through fresh addresses for fresh quotas."""
    if ":" not in address:
        return address
    try:
        parsed = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if parsed.ipv4_mapped:
        return str(parsed.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(parsed), 64), strict=False))
