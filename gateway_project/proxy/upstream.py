"""Calls to the services. :func:`send` (the proxied requests) is a coroutine on the gateway worker's event
loop: keep-alive connections of that loop whose responses llhttp parses (proxy/connections.py), so a
request through the gateway costs little more than the service's own work (bench/README.md). Django's
views run on threads: their calls (the forwarded admin pages, the overview's parts, the docs' schemas) go
through :func:`send_blocking` and :func:`fetch`, which run the same coroutine on a loop thread of the
process (:data:`bridge`). The health checks use one urllib3 pool per instance (:func:`connection_pool`).

One call, :func:`send`: the service's circuit breaker admits it (proxy/breakers.py), the balancer picks an
instance (proxy/balancer.py), and a failure (connection refused or broken, timeout, 502/503/504) is tried
again on another instance when the request is idempotent and the retry fits the route's attempts, the
overall deadline and the service's retry budget (proxy/retries.py). Every attempt's outcome feeds the
breaker; a connection error also ejects the instance for a while. A route with a stale fallback answers
with a recent copy (proxy/fallback.py) rather than an error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypeVar

import urllib3
from django.conf import settings
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    ProtocolError,
    ReadTimeoutError,
)

from common.errors import ApplicationError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from configcenter import runtime as runtime_config
from proxy import balancer, breakers, connections, fallback, retries
from proxy.routes import DEFAULT_UPSTREAM, UpstreamPolicy

CHUNK_SIZE = 64 * 1024
_tracer = trace.get_tracer(__name__)
RETRIED_STATUSES = frozenset({502, 503, 504})
T = TypeVar("T")
P = ParamSpec("P")


class CircuitOpen(UpstreamUnavailable):
    """The service's breaker is open: answered without trying it."""

    def __init__(self, service: str, retry_after: int) -> None:
        super().__init__(details={"service": service, "reason": "circuit_open"})
        self.headers = {"Retry-After": str(retry_after)}


@functools.cache
def pool_manager() -> urllib3.PoolManager:
    return urllib3.PoolManager(num_pools=32, maxsize=settings.UPSTREAM_POOL_SIZE, block=False, retries=False)


@functools.cache
def _origin(base_url: str) -> tuple[str, str, int | None]:
    url = urllib3.util.parse_url(base_url)
    return url.scheme or "http", url.host or "", url.port


def connection_pool(base_url: str) -> HTTPConnectionPool:
    scheme, host, port = _origin(base_url)
    return pool_manager().connection_from_host(host, port, scheme)


# For the urllib3 calls (health checks). Bounded: the config center can change the timeouts at any time.
@functools.lru_cache(maxsize=128)
def timeout(connect: float, read: float) -> urllib3.Timeout:
    return urllib3.Timeout(connect=connect, read=read)


class Answer:
    """The service's response, its body still unread, and what to do once the client has it."""

    def __init__(
        self,
        response: connections.Response | fallback.StoredResponse,
        *,
        instance: str,
        on_close: Callable[[], None] | None = None,
        copy_key: str | None = None,
    ) -> None:
        self.response = response
        self.status = response.status
        self.reason = response.reason
        self.headers = response.headers
        self.instance = instance  # the base URL that answered, or "stale-copy"
        self._on_close = on_close
        self.copy_key = copy_key

    def closed(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


async def send(
    service: str,
    method: str,
    target: str,
    *,
    headers: dict[str, str],
    body: bytes | None,
    policy: UpstreamPolicy = DEFAULT_UPSTREAM,
    anonymous: bool = False,
) -> Answer:
    """Send the request and return the answer with its body still unread (stream it with
    :class:`UpstreamBody`, which releases the connection). Failures raise the upstream errors of
    :mod:`common.errors`: 503 when nothing reached the service (:class:`CircuitOpen` while its breaker
    is open), 504 when it did not answer in time, 502 when the exchange broke."""
    # The feature.stale_fallback flag (config center, default on) switches the fallback off for every
    # route at runtime: then no copy is served, nor taken.
    stale = policy.stale_fallback and method == "GET" and runtime_config.value("feature.stale_fallback") is not False
    try:
        answer = await _send(service, method, target, headers=headers, body=body, policy=policy)
    except (UpstreamUnavailable, UpstreamTimeout, UpstreamError):
        if stale and (copy := fallback.stale_copy(service, target)):
            return Answer(copy, instance="stale-copy")
        raise
    if stale:
        if answer.status in RETRIED_STATUSES and (copy := fallback.stale_copy(service, target)):
            UpstreamBody(answer).close()
            return Answer(copy, instance="stale-copy")
        if anonymous:
            answer.copy_key = fallback.wants_copy(service, target, answer.response)
    return answer


async def _send(
    service: str, method: str, target: str, *, headers: dict[str, str], body: bytes | None, policy: UpstreamPolicy
) -> Answer:
    deadline = time.monotonic() + (policy.deadline or settings.UPSTREAM_DEADLINE)
    # A route's own timeout wins (it was chosen for that route); otherwise the config center's current
    # value, otherwise the setting. Read per call from the worker's in-memory view: a new version applies
    # to the next request.
    connect_timeout = (
        policy.connect_timeout or runtime_config.value("upstream.connect_timeout") or settings.UPSTREAM_CONNECT_TIMEOUT
    )
    read_timeout = (
        policy.read_timeout or runtime_config.value("upstream.read_timeout") or settings.UPSTREAM_READ_TIMEOUT
    )
    instances = balancer.balancer(service)
    breaker = breakers.breaker(service)
    budget = retries.budget(service)
    budget.record_request()
    safe = retries.retryable(method, headers, honours_idempotency_key=policy.honours_idempotency_key)
    allowed_retries = policy.retries if safe else 0
    retried = 0
    tried: list[balancer.Instance] = []
    while True:
        try:
            probe = breaker.admit()
        except breakers.BreakerOpen as exc:
            raise CircuitOpen(service, exc.retry_after) from exc
        instance = instances.acquire(exclude=tried)
        tried.append(instance)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            instances.release(instance)
            breaker.cancel(probe)
            raise UpstreamTimeout(details={"service": service, "reason": "deadline"})
        failure: ApplicationError
        try:
            response = await _attempt(
                instance.url,
                method,
                target,
                headers=headers,
                body=body,
                connect_timeout=min(connect_timeout, remaining),
                read_timeout=min(read_timeout, remaining),
            )
        except ConnectTimeoutError as exc:  # NewConnectionError (refused) included: nothing was sent
            instances.eject(instance, seconds=settings.UPSTREAM_EJECT_SECONDS, reason=type(exc).__name__)
            failure = UpstreamUnavailable(details={"service": service})
        except ReadTimeoutError:
            failure = UpstreamTimeout(details={"service": service})
        except (ProtocolError, HTTPError):  # the connection broke mid-exchange
            failure = UpstreamError(details={"service": service})
        except BaseException:  # anything unforeseen (a cancelled request too) must not leak a probe slot
            instances.release(instance)
            breaker.cancel(probe)
            raise
        else:
            breaker.record(success=response.status < 500, probe=probe)
            if response.status not in RETRIED_STATUSES or not await _may_retry(
                retried, allowed_retries, budget, deadline
            ):
                return Answer(response, instance=instance.url, on_close=functools.partial(instances.release, instance))
            await _discard(response)
            instances.release(instance)
            retried += 1
            continue
        breaker.record(success=False, probe=probe)
        instances.release(instance)
        if not await _may_retry(retried, allowed_retries, budget, deadline):
            if time.monotonic() >= deadline:
                raise UpstreamTimeout(details={"service": service, "reason": "deadline"}) from failure
            raise failure
        retried += 1


async def _discard(response: connections.Response) -> None:
    """Drop a response that will not be passed on (one about to be retried): its connection is reused
    when the rest of its body arrives in time, closed otherwise."""
    try:
        await response.drain_conn()
    except (ProtocolError, HTTPError):
        response.close()
    response.release_conn()


async def _attempt(
    base_url: str,
    method: str,
    target: str,
    *,
    headers: dict[str, str],
    body: bytes | None,
    connect_timeout: float,
    read_timeout: float,
) -> connections.Response:
    """One call to one instance (proxy/connections.py), in a CLIENT span of the request's trace whose
    context goes along in ``traceparent``: no instrumentation watches our connections, and the urllib3
    one cost ≈ 200 µs per call (it binds urlopen's signature, records three metric histograms and builds a
    dozen attributes). In a trace that is not sampled (``OTEL_TRACES_SAMPLER``) no span is made: the
    server span's context goes along instead, marked not sampled, so the services record nothing either."""
    call = functools.partial(
        connections.request,
        base_url,
        method,
        target,
        headers=headers,
        body=body,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    if not trace.get_current_span().is_recording():
        propagate.inject(headers)
        return await call()
    span = _tracer.start_span(
        method,
        kind=SpanKind.CLIENT,
        attributes={"http.method": method, "http.url": base_url + target.partition("?")[0]},
    )
    propagate.inject(headers, context=trace.set_span_in_context(span))  # replaces a previous attempt's
    try:
        response = await call()
    except BaseException as exc:
        if span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()
        raise
    if span.is_recording():
        span.set_attribute("http.status_code", response.status)
        if response.status >= 400:
            span.set_status(Status(StatusCode.ERROR))
    span.end()
    return response


async def _may_retry(retried: int, allowed: int, budget: retries.RetryBudget, deadline: float) -> bool:
    """Whether another attempt is allowed; if so, after its jittered backoff has been waited out."""
    if retried >= allowed:
        return False
    pause = retries.backoff(retried + 1)
    if time.monotonic() + pause >= deadline or not budget.try_retry():
        return False
    await asyncio.sleep(pause)
    return True


class UpstreamBody:
    """The service's response body as an async iterable; :meth:`close` once the client has it (or went
    away): a fully read connection goes back to the pool, a partly read one is closed, since what is left
    of the body would be taken for the next response."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._response = answer.response

    def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._response.stream(CHUNK_SIZE)
        if self._answer.copy_key:
            return fallback.copying(self._answer.copy_key, self._response, chunks)
        return chunks

    def close(self) -> None:
        if not self._response.closed:
            self._response.close()
        self._response.release_conn()
        self._answer.closed()


# -- calls from Django's threads ----------------------------------------------------------------------------
#
# The proxy's connections belong to an event loop. Django's views run on threads (the forwarded admin pages
# and static files, the overview, the docs' schemas): their calls run on one event loop per process kept by
# a thread of its own, :data:`bridge`, with the caller's context (request id, trace) carried over.


class LoopThread:
    """An event loop on a daemon thread, started on first use (after a fork too), that runs coroutines
    for threads that have none."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name=self.name, daemon=True).start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop in the calling thread's context and wait for its result."""
        loop = self.loop()
        context = contextvars.copy_context()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            task = loop.create_task(coroutine, context=context)
            task.add_done_callback(functools.partial(_copy_outcome, done))

        loop.call_soon_threadsafe(start)
        return done.result()


def _copy_outcome(done: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
    if task.cancelled():
        done.cancel()
    elif (exc := task.exception()) is not None:
        done.set_exception(exc)
    else:
        done.set_result(task.result())


bridge = LoopThread("upstream-bridge")


def on_bridge(coroutine_function: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """``coroutine_function`` for a thread: run on :data:`bridge`, waited for."""

    @functools.wraps(coroutine_function)
    def blocking(*args: P.args, **kwargs: P.kwargs) -> T:
        return bridge.run(coroutine_function(*args, **kwargs))

    return blocking


# :func:`send` for a thread: read the answer's body with :class:`BlockingBody`.
send_blocking = on_bridge(send)


class BlockingBody:
    """:class:`UpstreamBody` for a thread (a StreamingHttpResponse of Django's, which calls ``close``)."""

    def __init__(self, answer: Answer) -> None:
        self._body = UpstreamBody(answer)

    def __iter__(self) -> Iterator[bytes]:
        chunks = aiter(self._body)
        while True:
            try:
                yield bridge.run(anext(chunks))
            except StopAsyncIteration:
                return

    def close(self) -> None:
        bridge.run(_close(self._body))  # transports are closed on their own loop


async def _close(body: UpstreamBody) -> None:
    body.close()


async def _fetch(
    service: str, target: str, *, headers: dict[str, str], policy: UpstreamPolicy, max_bytes: int
) -> tuple[int, bytes]:
    """GET ``target``: the status and at most ``max_bytes`` of the body (more than ``max_bytes - 1`` means
    it was longer). Raises the upstream errors of :func:`send`, and urllib3's ``ProtocolError``/
    ``ReadTimeoutError`` when the body broke off or stalled."""
    answer = await send(service, "GET", target, headers=headers, body=None, policy=policy)
    body = UpstreamBody(answer)
    try:
        return answer.status, await answer.response.read(max_bytes)
    finally:
        body.close()


# :func:`_fetch` for a thread (the overview's parts, the docs' schemas).
fetch = on_bridge(_fetch)


def upstreams_status() -> dict[str, object]:
    """Breaker state and instance health of every service, as this worker process sees them."""
    states = breakers.states()
    return {
        "breakers": breakers.store_status(),
        "services": {
            each.service: {"breaker": states[each.service], "instances": each.status()} for each in balancer.balancers()
        },
    }


def health_target(service: str) -> str:
    return balancer.balancer(service).health_target()
