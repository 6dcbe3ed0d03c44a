"""A small TCP proxy on loopback whose faults the fault tests switch on and off.

It sits between one service and something it depends on (RabbitMQ, another service), so that "RabbitMQ
stopped" or "the payment service is slow" can be played without touching the machine's shared RabbitMQ or
anyone else's processes. One thread per direction per connection; every socket is on 127.0.0.1.

Faults:
- ``refuse()``: the listening socket is closed (a connect gets ECONNREFUSED, as with a stopped server) and
  every open connection is cut; ``restore()`` listens again on the same port.
- ``slow(delay)``: each chunk from the upstream to the client waits ``delay`` seconds (a reply arrives
  later than the caller's read timeout, while the request itself got through).
- ``hold_next_ack(direction, skip=n)`` (AMQP proxies only): let ``n`` ``basic.ack`` frames through in that
  direction, then hold the connection that carries the next one, from that frame on. Down, that is a
  publisher confirm that never reaches the publisher (the message is on the broker; the relay does not
  know it); up, a consumer's acknowledgement that never reaches the broker (the task's effect is done; the
  broker will deliver the message again). ``cut()`` then closes the connections without delivering what
  was held; ``restore()`` would deliver it. Holding a whole direction instead would also stall the AMQP
  handshake of a process that is still connecting.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["up", "down"]  # up: client -> upstream; down: upstream -> client
HOST = "127.0.0.1"
AMQP_HEADER = b"AMQP"  # the protocol header a client sends first: b"AMQP\x00\x00\x09\x01"
FRAME_METHOD = 1
BASIC_ACK = b"\x00\x3c\x00\x50"  # class 60 (basic), method 80 (ack)


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class _AmqpFrames:
    """Splits one direction of an AMQP 0-9-1 connection into frames (header: type, channel, size)."""

    def __init__(self, *, expect_header: bool) -> None:
        self.buffer = bytearray()
        self.expect_header = expect_header

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.buffer += data
        if self.expect_header:
            if len(self.buffer) < 8:
                return
            self.expect_header = False
            if self.buffer.startswith(AMQP_HEADER):
                yield bytes(self.buffer[:8])
                del self.buffer[:8]
        while len(self.buffer) >= 7:
            end = 7 + int.from_bytes(self.buffer[3:7], "big") + 1  # header, payload, frame-end octet
            if len(self.buffer) < end:
                return
            yield bytes(self.buffer[:end])
            del self.buffer[:end]


def _is_basic_ack(frame: bytes) -> bool:
    return len(frame) >= 11 and frame[0] == FRAME_METHOD and frame[7:11] == BASIC_ACK


@dataclass
class FaultProxy:
    name: str
    upstream_port: int
    upstream_host: str = HOST
    amqp: bool = False  # parse AMQP frames (needed by hold_next_ack)
    port: int = 0
    delay: float = 0.0
    acks_held: int = 0  # basic.ack frames caught by hold_next_ack since start
    _ack_skips: dict[str, int] = field(default_factory=dict)  # armed direction -> acks still to let through
    _restores: int = 0
    _listener: socket.socket | None = None
    _pairs: dict[int, _Pair] = field(default_factory=dict)
    _state: threading.Condition = field(default_factory=threading.Condition)
    _stopped: bool = False

    # lifecycle ------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._listen()
        return self

    def stop(self) -> None:
        with self._state:
            self._stopped = True
            self._state.notify_all()
        self._close_listener()
        self.cut()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name=f"{self.name}-accept", daemon=True).start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    # faults ---------------------------------------------------------------------------------------

    def refuse(self) -> int:
        """As if the server stopped: new connections refused, open ones cut (how many: returned)."""
        self._close_listener()
        return self.cut()

    def restore(self) -> None:
        """Back to a faithful proxy: listening, no delay, nothing held or armed."""
        with self._state:
            self.delay = 0.0
            self._ack_skips.clear()
            self._restores += 1
            self._state.notify_all()
        if self._listener is None:
            for _ in range(50):  # the port may linger for a moment after the close
                try:
                    self._listen()
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                raise RuntimeError(f"{self.name}: could not listen on port {self.port} again")

    def slow(self, delay: float) -> None:
        with self._state:
            self.delay = delay

    def hold_next_ack(self, direction: Direction, *, skip: int = 0) -> None:
        if not self.amqp:
            raise ValueError(f"{self.name} is not an AMQP proxy")
        with self._state:
            self._ack_skips[direction] = skip

    def wait_for_held_ack(self, timeout: float, *, since: int) -> bool:
        """Wait until more than ``since`` acks have been caught (``since``: ``acks_held`` before arming)."""
        deadline = time.monotonic() + timeout
        with self._state:
            while self.acks_held <= since:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._state.wait(remaining)
            return True

    def cut(self) -> int:
        """Close every open connection, whatever was held undelivered; return how many."""
        with self._state:
            pairs = list(self._pairs.values())
            self._pairs.clear()
            self._state.notify_all()
        for pair in pairs:
            pair.close()
        return len(pairs)

    # plumbing -------------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by refuse() or stop()
            try:
                upstream = socket.create_connection((self.upstream_host, self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client=client, upstream=upstream)
            with self._state:
                self._pairs[id(pair)] = pair
            for direction in ("up", "down"):
                threading.Thread(
                    target=self._pump, args=(pair, direction), name=f"{self.name}-{direction}", daemon=True
                ).start()

    def _pump(self, pair: _Pair, direction: Direction) -> None:
        source, target = (pair.client, pair.upstream) if direction == "up" else (pair.upstream, pair.client)
        frames = _AmqpFrames(expect_header=direction == "up") if self.amqp else None
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    return
                if frames is not None:
                    held = self._deliver_frames(pair, direction, frames, data, target)
                    if held is None:
                        return
                    continue
                if self.delay and direction == "down":
                    time.sleep(self.delay)
                if pair.closed:
                    return
                target.sendall(data)
        except OSError:
            return
        finally:
            with self._state:
                self._pairs.pop(id(pair), None)
            pair.close()

    def _deliver_frames(
        self, pair: _Pair, direction: Direction, frames: _AmqpFrames, data: bytes, target: socket.socket
    ) -> bool | None:
        """Deliver the whole frames in ``data``; an armed basic.ack is delivered only after restore(), and
        nothing behind it either. None when the pair was cut meanwhile."""
        out = bytearray()
        for frame in frames.feed(data):
            if _is_basic_ack(frame) and self._catch(direction):
                target.sendall(bytes(out))
                out.clear()
                with self._state:
                    restores = self._restores
                    while not pair.closed and not self._stopped and self._restores == restores:
                        self._state.wait(0.2)
                if pair.closed:
                    return None
            out += frame
        if pair.closed:
            return None
        if out:
            target.sendall(bytes(out))
        return True

    def _catch(self, direction: Direction) -> bool:
        with self._state:
            skip = self._ack_skips.get(direction)
            if skip is None:
                return False
            if skip > 0:
                self._ack_skips[direction] = skip - 1
                return False
            del self._ack_skips[direction]
            self.acks_held += 1
            self._state.notify_all()
            return True
