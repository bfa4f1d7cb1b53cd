"""What a bridge request ends in, and the client's books: every request gets exactly one
outcome, an ``Ack`` or one of the ``BridgeError`` kinds below (``mateperf.bridge.client``).
"""

from __future__ import annotations

import math
import select
import socket
import threading
from dataclasses import dataclass
from typing import Any


class BridgeError(RuntimeError):
    """Base of every bridge failure."""


class BridgeConnectError(BridgeError):
    def __init__(self, host: str, port: int, attempts: int, cause: BaseException | None):
        super().__init__(f"cannot connect to {host}:{port} after {attempts} attempt(s): {cause}")
        self.host, self.port, self.attempts, self.cause = host, port, attempts, cause


class BridgeTimeout(BridgeError):
    def __init__(self, command: str, request_id: Any, timeout_s: float):
        super().__init__(f"{command} (id {request_id}) got no response within {timeout_s:g} s")
        self.command, self.request_id, self.timeout_s = command, request_id, timeout_s


class BridgeDisconnected(BridgeError):
    def __init__(self, command: str | None, request_id: Any, reason: str):
        what = f"{command} (id {request_id})" if command else "request"
        super().__init__(f"{what} failed: connection lost ({reason})")
        self.command, self.request_id, self.reason = command, request_id, reason


class CommandRejected(BridgeError):
    def __init__(self, response: dict):
        super().__init__(f"{response.get('command')} rejected: {response.get('message')}")
        self.response = response


@dataclass(slots=True)
class Ack:
    """A completion ack. Times are CLOCK_MONOTONIC ns; peer times are None for a legacy peer."""

    id: Any
    command: str
    sent_ns: int
    acked_ns: int
    frame: int | None = None
    recv_ns: int | None = None
    apply_ns: int | None = None
    count: int = 1
    data: dict | None = None

    @property
    def rtt_ns(self) -> int:
        return self.acked_ns - self.sent_ns


class PendingRequest:
    """A request on the wire; ``wait`` returns its Ack or raises its failure."""

    __slots__ = ("id", "command", "sent_ns", "event", "outcome", "abandoned")

    def __init__(self, request_id: Any, command: str):
        self.id = request_id
        self.command = command
        self.sent_ns = 0
        # made only when a second thread must wait while another reads (see _await)
        self.event: threading.Event | None = None
        self.outcome: Ack | BridgeError | None = None
        self.abandoned = False

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def resolve(self, outcome: Ack | BridgeError) -> None:
        self.outcome = outcome
        if self.event is not None:
            self.event.set()

    def result(self) -> Ack:
        if isinstance(self.outcome, BridgeError):
            raise self.outcome
        assert self.outcome is not None
        return self.outcome


@dataclass
class ClientCounters:
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    timed_out: int = 0
    disconnected: int = 0
    late: int = 0
    unmatched: int = 0
    reconnects: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Readable:
    """Waits until a socket has data: poll() where the OS has it (cheapest per call), select()
    on Windows, where the companion runs and select.poll does not exist."""

    __slots__ = ("_sock", "_poll")

    def __init__(self, sock: socket.socket | None):
        self._sock = sock
        self._poll = None
        if sock is not None and hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(sock, select.POLLIN)

    def wait(self, timeout_s: float) -> bool:
        if self._sock is None:
            return False
        if self._poll is not None:
            return bool(self._poll.poll(max(0, math.ceil(timeout_s * 1000))))
        readable, _, _ = select.select([self._sock], [], [], max(0.0, timeout_s))
        return bool(readable)
