"""A `limits` storage kept in a SQLite file: the rate-limit store of embedded mode (no Redis).

The launcher runs the gateway as several gunicorn worker processes; a per-process memory store would let
each of them grant the whole quota. SQLite gives one counter per key that every process on the machine
updates atomically: the increment is one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` statement,
and SQLite serialises writers with its file lock. WAL mode keeps readers out of writers' way, and
``synchronous=OFF`` skips fsync: a counter lost in a power cut only hands out a fresh quota. Measured
on the project's 2-core machine: about 32 µs of CPU per increment (a pipelined Redis round trip costs
about 120 µs of CPU and 190 µs of wall time), and 27,000 increments per second of one key from
2 processes x 8 threads.

Only the fixed-window operations are implemented (what proxy/ratelimit.py uses).

Real mode counts in Redis with `limits`' own storage, its increment made cheaper by
:class:`RedisCounterStorage`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from limits.errors import StorageError
from limits.storage import RedisStorage, Storage
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

_SCHEMA = """CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID"""

# A row whose window has passed starts again from the increment, as an expired Redis key would.
# (In an UPDATE every expression reads the row's values from before it.)
_INCR = """INSERT INTO counters (key, count, expires_at) VALUES (:key, :amount, :expires_at)
ON CONFLICT (key) DO UPDATE SET
    count = CASE WHEN expires_at <= :now THEN excluded.count ELSE count + excluded.count END,
    expires_at = CASE WHEN expires_at <= :now THEN excluded.expires_at ELSE expires_at END
RETURNING count"""

PURGE_INTERVAL = 60.0  # seconds between deletions of expired rows, per process


class SQLiteStorage(Storage):
    """``sqlite:///path/to/file``, or ``SQLiteStorage(path=...)``."""

    STORAGE_SCHEME = ["sqlite"]

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        *,
        path: str | Path | None = None,
        key_prefix: str = "",
        timeout: float = 0.25,
        **options: float | str | bool,
    ) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        if path is None:
            if not uri or not uri.startswith("sqlite:///"):
                raise ValueError("SQLiteStorage needs a path or a sqlite:///path URI")
            path = uri.removeprefix("sqlite://")
        self.path = Path(path)
        self.key_prefix = key_prefix
        self.timeout = timeout
        self._local = threading.local()  # sqlite3 connections belong to the thread that opened them
        self._next_purge = 0.0

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (sqlite3.Error, OSError)

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit: each statement is its own transaction. The timeout is SQLite's busy timeout,
            # how long a writer waits for another process's write to finish.
            connection = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            try:
                self._prepare(connection)
            except sqlite3.Error:
                connection.close()
                raise
            self._local.connection = connection
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        """WAL mode and the table, tried again within the timeout while the file is locked: switching a
        new file to WAL takes it whole, and SQLite answers "database is locked" at once, without its busy
        wait, to the others doing the same (seen with 3 processes x 8 threads opening a new file together,
        as a gateway's workers starting on a new VAR_DIR do)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=OFF")
                connection.execute(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _key(self, key: str) -> str:
        return f"{self.key_prefix}:{key}" if self.key_prefix else key

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        connection = self._connection()
        row = connection.execute(
            _INCR, {"key": self._key(key), "amount": amount, "expires_at": now + expiry, "now": now}
        ).fetchone()
        if now >= self._next_purge:
            self._next_purge = now + PURGE_INTERVAL
            connection.execute("DELETE FROM counters WHERE expires_at <= ?", (now,))
        return int(row[0])

    def get(self, key: str) -> int:
        row = (
            self._connection()
            .execute("SELECT count FROM counters WHERE key = ? AND expires_at > ?", (self._key(key), time.time()))
            .fetchone()
        )
        return int(row[0]) if row else 0

    def get_expiry(self, key: str) -> float:
        row = (
            self._connection()
            .execute("SELECT expires_at FROM counters WHERE key = ? AND expires_at > ?", (self._key(key), time.time()))
            .fetchone()
        )
        return float(row[0]) if row else time.time()

    def check(self) -> bool:
        try:
            self._connection().execute("SELECT count(*) FROM counters").fetchone()
        except (sqlite3.Error, OSError):
            return False
        return True

    def reset(self) -> int | None:
        prefix = self._key("")
        return (
            self._connection()
            .execute("DELETE FROM counters WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))
            .rowcount
        )

    def clear(self, key: str) -> None:
        self._connection().execute("DELETE FROM counters WHERE key = ?", (self._key(key),))


class RedisCounterStorage(RedisStorage):
    """`limits`' Redis storage (real mode), its increment sent over a Redis connection kept per thread.

    The same Lua script on the same keys as ``RedisStorage.incr`` (so counts stay shared with anything
    else counting through `limits`), without redis-py's client layer around it: on the gateway's hot path
    that layer (pool checkout with its health read, deprecation and observability wrappers, retry object)
    cost about 90 µs of the rate limit's 150 µs per request (bench/README.md). Failures raise redis-py's
    errors, which `limits` turns into ``StorageError`` as for its own methods; the health check and every
    other operation are `limits`' own.

    :meth:`incr_async` is the same increment for the gateway's event loop (proxy/edge.py), over connections
    of that loop's own: the loop serves other requests while Redis answers. Blocking on the round trip
    would hold every request of the worker for as long as Redis takes, on loopback ≈ 50 µs, but across a
    network or from a loaded Redis milliseconds, each request in turn."""

    # Connections kept per event loop between increments: as many as it has had increments in flight at
    # once, up to this many (a connection is opened with two round trips more than an increment takes, and
    # an idle one costs Redis a few kilobytes); a burst beyond opens more, closed after use.
    IDLE_ASYNC_CONNECTIONS = 128

    def __init__(self, uri: str, *, socket_timeout: float | None = None, **options: Any) -> None:
        super().__init__(uri, socket_timeout=socket_timeout, **options)
        self._local = threading.local()
        self.timeout = socket_timeout
        # Only the connection class and arguments for the URL (TCP, TLS or Unix socket): its connections
        # are made by incr_async, outside the pool's checkout (the client layer the docstring speaks of).
        # No timeouts of redis-py's own: incr_async bounds the whole exchange, connecting included, once.
        self._async_pool = redis.asyncio.ConnectionPool.from_url(
            uri.replace("redis+unix://", "unix://"),  # as RedisStorage reads its URL
            socket_timeout=None,
            socket_connect_timeout=None,
            retry=redis.asyncio.retry.Retry(NoBackoff(), 0),  # no retries: the caller's fallback is the retry
        )
        self._idle_by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, list[redis.asyncio.connection.AbstractConnection]
        ] = weakref.WeakKeyDictionary()

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        connection = self._thread_connection()
        script = self.lua_incr_expire
        args = (1, self.prefixed_key(key), expiry, amount)
        try:
            try:
                connection.send_command("EVALSHA", script.sha, *args)
                return int(connection.read_response())
            except NoScriptError:  # a restarted or flushed Redis has forgotten the script: send it whole
                connection.send_command("EVAL", script.script, *args)
                return int(connection.read_response())
        except BaseException:
            connection.disconnect()  # a reply may still be on its way: never read it as the next one
            raise

    async def incr_async(self, key: str, expiry: int, amount: int = 1) -> int:
        """:meth:`incr` awaited on the running event loop, within ``socket_timeout`` in all (if set); a failure is a
        ``StorageError``, as `limits` makes of its own methods' errors."""
        idle = self._idle_by_loop.setdefault(asyncio.get_running_loop(), [])
        connection = idle.pop() if idle else self._async_pool.make_connection()
        script = self.lua_incr_expire
        args = (1, self.prefixed_key(key), expiry, amount)
        try:
            async with asyncio.timeout(self.timeout):
                await _fresh(connection)
                try:
                    await connection.send_command("EVALSHA", script.sha, *args)
                    count = int(await connection.read_response())
                except NoScriptError:
                    await connection.send_command("EVAL", script.script, *args)
                    count = int(await connection.read_response())
        except BaseException as exc:
            await connection.disconnect(nowait=True)  # a reply may still be on its way, as in incr
            if isinstance(exc, (redis.RedisError, OSError)):  # TimeoutError included
                raise StorageError(exc) from exc
            raise
        if len(idle) < self.IDLE_ASYNC_CONNECTIONS:
            idle.append(connection)
        else:
            await connection.disconnect(nowait=True)
        return count

    def _thread_connection(self) -> redis.connection.AbstractConnection:
        connection: redis.connection.AbstractConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            pool = self.storage.connection_pool
            connection = self._local.connection = pool.connection_class(**pool.connection_kwargs)
        elif connection.is_connected:
            # As redis-py's pool does before lending a connection: one that has something to read (the
            # server closed it while idle, or a stray reply) is reopened before a command is sent on it.
            # (One not connected, after a failure, connects when the command is sent.)
            try:
                stale = connection.can_read()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                stale = True
            if stale:
                connection.disconnect()
        return connection


async def _fresh(connection: redis.asyncio.connection.AbstractConnection) -> None:
    """As ``_thread_connection`` does for a thread's connection: one kept idle that has something to read
    (the server closed it meanwhile, or a stray reply) is reopened before a command is sent on it."""
    if not connection.is_connected:
        return  # new, or closed after a failure: it connects when the command is sent
    try:
        stale = await connection.can_read()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        stale = True
    if stale:
        await connection.disconnect(nowait=True)
