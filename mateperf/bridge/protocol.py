"""The bridge wire format: newline-delimited UTF-8 JSON, compatible with Desktop-Mate.

A request is ``{"command": str, "data": {...}}``; mateperf adds an optional ``id`` that the
peer echoes in its response, a ``batch`` command whose sub-commands are applied in one frame,
and completion acks carrying the frame number and the peer's receive/apply times. Those times
are CLOCK_MONOTONIC nanoseconds (Python's ``perf_counter_ns`` on Linux, Mono's Stopwatch), so
they are comparable with the client's clock on the same host.

A peer that ignores the extensions (the original bridge, "legacy") still works: it answers
without ids, and the client matches its responses to requests in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

PROTOCOL_VERSION = 2
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5555
MAX_LINE_BYTES = 1 << 20
MAX_BATCH_COMMANDS = 1000

# json.dumps with any non-default argument builds a new encoder per call, and json.loads of
# bytes sniffs the encoding first; on the hot path both cost as much as the parse itself
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_DECODER = json.JSONDecoder()

# Commands that answer with data instead of changing the avatar; never counted.
QUERY_COMMANDS = frozenset({"stats", "frame_stats", "identity"})


class ProtocolError(ValueError):
    """A line that is not a valid request or response; ``request_id`` is set when known."""

    def __init__(self, message: str, request_id: Any = None, command: Any = None):
        super().__init__(message)
        self.request_id = request_id
        self.command = command


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    "number": _is_number,
    "string": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
}


@dataclass(frozen=True)
class Field:
    kind: str  # "number", "string", "bool", "list"
    required: bool = True
    low: float | None = None
    high: float | None = None

    def check(self, command: str, name: str, value: Any) -> None:
        where = f"{command}.{name}"
        if not _KIND_CHECKS[self.kind](value):
            raise ProtocolError(f"{where}: expected {self.kind}, got {type(value).__name__}")
        if self.kind == "number":
            if self.low is not None and value < self.low:
                raise ProtocolError(f"{where}: {value} is below {self.low}")
            if self.high is not None and value > self.high:
                raise ProtocolError(f"{where}: {value} is above {self.high}")
        if self.kind == "string" and self.low is not None and len(value) < self.low:
            raise ProtocolError(f"{where}: must not be empty")


COMMANDS: dict[str, dict[str, Field]] = {
    "load_model": {"path": Field("string", required=False)},
    "unload_model": {},
    "set_expression": {"name": Field("string", low=1), "value": Field("number", low=0, high=1)},
    "reset_expressions": {},
    "set_transition_speed": {"speed": Field("number", low=0)},
    "set_auto_blink": {"enabled": Field("bool")},
    "set_auto_head_movement": {
        "enabled": Field("bool"),
        "min_interval": Field("number", required=False, low=0),
        "max_interval": Field("number", required=False, low=0),
        "max_angle": Field("number", required=False, low=0, high=180),
    },
    # mateperf extensions
    "echo": {"payload": Field("string")},
    "batch": {"commands": Field("list")},
    "stats": {},
    "frame_stats": {"reset": Field("bool", required=False)},
    "identity": {},
}


def validate_command(command: Any, data: Any, *, inside_batch: bool = False) -> dict:
    """Check one command's name, fields and types; return its data (``{}`` when absent)."""
    if not isinstance(command, str):
        raise ProtocolError(f"command: expected string, got {type(command).__name__}")
    spec = COMMANDS.get(command)
    if spec is None:
        raise ProtocolError(f"unknown command {command!r}")
    if command == "batch" and inside_batch:
        raise ProtocolError("batch: batches do not nest")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError(f"{command}.data: expected object, got {type(data).__name__}")
    for name, field in spec.items():
        if name in data:
            field.check(command, name, data[name])
        elif field.required:
            raise ProtocolError(f"{command}.{name}: missing")
    if command == "set_auto_head_movement":
        lo, hi = data.get("min_interval"), data.get("max_interval")
        if lo is not None and hi is not None and lo > hi:
            raise ProtocolError("set_auto_head_movement: min_interval is above max_interval")
    if command == "batch":
        subs = data["commands"]
        if not subs:
            raise ProtocolError("batch.commands: must not be empty")
        if len(subs) > MAX_BATCH_COMMANDS:
            raise ProtocolError(f"batch.commands: more than {MAX_BATCH_COMMANDS} commands")
        for i, sub in enumerate(subs):
            if not isinstance(sub, dict):
                raise ProtocolError(f"batch.commands[{i}]: expected object")
            if sub.get("command") in QUERY_COMMANDS:
                raise ProtocolError(f"batch.commands[{i}]: {sub.get('command')} cannot be batched")
            try:
                validate_command(sub.get("command"), sub.get("data"), inside_batch=True)
            except ProtocolError as exc:
                raise ProtocolError(f"batch.commands[{i}]: {exc}") from None
    return data


class Request(NamedTuple):  # a tuple: made once per request on the hot path
    id: Any  # int or str; None for a legacy (fire-and-forget) request
    command: str
    data: dict


def decode_request(line: bytes) -> Request:
    """Parse and validate one request line (without its newline)."""
    try:
        msg = _DECODER.decode(line.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"request: expected object, got {type(msg).__name__}")
    request_id = msg.get("id")
    if request_id is not None and (
        isinstance(request_id, bool) or not isinstance(request_id, int | str)
    ):
        raise ProtocolError("id: expected integer or string")
    command = msg.get("command")
    try:
        data = validate_command(command, msg.get("data"))
    except ProtocolError as exc:
        exc.request_id = request_id
        exc.command = command if isinstance(command, str) else None
        raise
    return Request(request_id, command, data)


def encode(message: dict) -> bytes:
    """One wire line: compact JSON and a newline."""
    return (_ENCODER.encode(message) + "\n").encode()


def encode_request(command: str, data: dict | None = None, request_id: Any = None) -> bytes:
    message: dict[str, Any] = {"command": command, "data": data or {}}
    if request_id is not None:
        message["id"] = request_id
    return encode(message)


def response(
    command: str | None,
    status: str,
    message: str,
    request_id: Any = None,
    *,
    legacy: bool = False,
    **extra: Any,
) -> dict:
    """A response object; a legacy peer sends only the Desktop-Mate fields."""
    out: dict[str, Any] = {"type": "response", "command": command, "status": status}
    out["message"] = message
    if not legacy:
        out["id"] = request_id
        out.update(extra)
    return out


def greeting(*, legacy: bool, peer: str) -> dict:
    out = {"type": "response", "status": "connected", "message": f"{peer} bridge ready"}
    if not legacy:
        out["protocol"] = PROTOCOL_VERSION
    return out


def decode_response(line: bytes) -> dict:
    try:
        msg = _DECODER.decode(line.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"malformed response JSON: {exc}") from None
    if not isinstance(msg, dict) or msg.get("type") != "response":
        raise ProtocolError(f"not a response: {line[:80]!r}")
    return msg


class LineBuffer:
    """Split a byte stream into lines, dropping (and reporting) lines over ``max_line_bytes``.

    ``feed`` returns complete lines; ``None`` in its output marks one oversized line, reported
    as soon as the limit is crossed so the peer can answer before the sender finishes.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES):
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._scan = 0
        self._discarding = False

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        self._buf += chunk
        while True:
            i = self._buf.find(b"\n", self._scan)
            if i < 0:
                self._scan = len(self._buf)
                if len(self._buf) > self.max_line_bytes:
                    if not self._discarding:
                        out.append(None)
                        self._discarding = True
                    self._buf.clear()
                    self._scan = 0
                return out
            line = bytes(self._buf[:i])
            del self._buf[: i + 1]
            self._scan = 0
            if self._discarding:
                self._discarding = False
            elif len(line) > self.max_line_bytes:
                out.append(None)
            else:
                out.append(line)


# -- the avatar the commands drive -------------------------------------------------------------


@dataclass
class AvatarState:
    """In-memory stand-in for the VRM avatar: what Unity would change, without rendering."""

    model: str | None = None
    transition_speed: float = 1.0
    auto_blink: bool = True
    head_movement_enabled: bool = False
    head_min_interval: float = 2.0
    head_max_interval: float = 5.0
    head_max_angle: float = 10.0
    echo_bytes: int = 0
    commands_applied: int = 0
    # blendshapes this model lacks: set_expression of one raises, as a real VRM rig would
    missing_blendshapes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.expressions: dict[str, float] = {}

    def checkpoint(self) -> tuple[dict, dict]:
        """What `restore` needs to undo the commands applied after this call (a failed batch)."""
        return dict(self.__dict__), dict(self.expressions)

    def restore(self, checkpoint: tuple[dict, dict]) -> None:
        fields, expressions = checkpoint
        self.__dict__.update(fields)
        self.expressions = expressions

    def apply(self, command: str, data: dict) -> None:
        handler: Callable[[dict], None] = getattr(self, f"_{command}")
        handler(data)
        self.commands_applied += 1

    def _load_model(self, data: dict) -> None:
        self.model = data.get("path") or "default"

    def _unload_model(self, data: dict) -> None:
        self.model = None
        self.expressions.clear()

    def _set_expression(self, data: dict) -> None:
        if data["name"] in self.missing_blendshapes:
            raise LookupError(f"no blendshape {data['name']!r} on this model")
        self.expressions[data["name"]] = float(data["value"])

    def _reset_expressions(self, data: dict) -> None:
        self.expressions.clear()

    def _set_transition_speed(self, data: dict) -> None:
        self.transition_speed = float(data["speed"])

    def _set_auto_blink(self, data: dict) -> None:
        self.auto_blink = data["enabled"]

    def _set_auto_head_movement(self, data: dict) -> None:
        self.head_movement_enabled = data["enabled"]
        self.head_min_interval = float(data.get("min_interval", self.head_min_interval))
        self.head_max_interval = float(data.get("max_interval", self.head_max_interval))
        self.head_max_angle = float(data.get("max_angle", self.head_max_angle))

    def _echo(self, data: dict) -> None:
        self.echo_bytes = len(data["payload"])

    def snapshot(self) -> dict:
        return {
            "model": self.model,
            "expressions": dict(sorted(self.expressions.items())),
            "transition_speed": self.transition_speed,
            "auto_blink": self.auto_blink,
            "head_movement_enabled": self.head_movement_enabled,
            "echo_bytes": self.echo_bytes,
            "commands_applied": self.commands_applied,
        }
