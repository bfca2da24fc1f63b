"""Envoy-format access logs for a :class:`~meshsdk.telemetry.record.CallRecord`.

Istio users read sidecar logs by their Envoy format (``[%START_TIME%] "%REQ(:METHOD)%
..."``) and configure their own with the same command operators, so the format strings
are Envoy's: :func:`compile_format` parses one once into literal text and operators,
and the returned :class:`Formatter` only calls precompiled functions per record (no
parsing, no regex). :func:`compile_json` does the same for Istio's JSON encoding.

Envoy's conventions kept: a missing value prints ``-`` (``null`` in JSON), durations
are whole milliseconds, ``%RESPONSE_CODE%`` is ``0`` when no response was sent, codes,
byte counts, durations and attempt counts are JSON numbers, header values can be
truncated with ``:N``. ``%REQ(X-REQUEST-ID)%`` falls back to the record's request id,
as Envoy logs the id it generated. Operators the record has no data for
(``%REQUEST_DURATION%``, ``%CONNECTION_TERMINATION_DETAILS%``) always print ``-``.

:class:`AccessLogger` writes the lines through :mod:`logging` (logger
``meshsdk.access``, level INFO, the record attached as ``mesh_call``), so applications
route, filter or ship them with the tools they already use.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import operator
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring as _encode_string
from typing import Final, TextIO

from meshsdk.errors import ConfigError
from meshsdk.telemetry.record import CallRecord

Value = str | int | None
"""An operator's value for one record: None is missing (``-`` / ``null``)."""

ValueFn = Callable[[CallRecord], Value]

DEFAULT_TEXT_FORMAT: Final = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
    '%CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" '
    "%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%"
)
"""Istio's default proxy access-log format, without Envoy's trailing newline (logging
adds one)."""

DEFAULT_JSON_LABELS: Final[Mapping[str, str]] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "route_name": "%ROUTE_NAME%",
}
"""Istio's default JSON access-log keys and their operators."""

ACCESS_LOGGER: Final = "meshsdk.access"
"""The logger :class:`AccessLogger` writes to unless given another."""


# --- values read from the record ----------------------------------------------------------

def _first(items: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in items:
        if key == name:
            return value
    return None


def _millis(seconds: float | None) -> int | None:
    """Seconds as Envoy's whole milliseconds (truncated, after rounding away float noise
    at the microsecond: 0.29 s is 290 ms, not 289)."""
    if seconds is None:
        return None
    return round(seconds * 1_000_000) // 1000


def _without_port(address: str | None) -> str | None:
    """``10.0.0.1:80`` -> ``10.0.0.1``, ``[::1]:80`` -> ``::1``; other forms unchanged."""
    if not address:
        return None
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else address
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host
    return address


def _request_header(name: str) -> ValueFn:
    """A reader for request header ``name`` (lower case); pseudo-headers map to the
    record as :meth:`CallRecord.request_header` does, without building a dict per call."""
    if name == ":method":
        return lambda r: r.method
    if name == ":path":
        return lambda r: r.path
    if name == ":authority":
        return lambda r: r.authority
    if name == ":scheme":
        return lambda r: r.scheme
    if name.startswith(":"):
        return lambda r: None
    if name == "x-request-id":
        return lambda r: _first(r.request_headers, name) or r.request_id
    return lambda r: _first(r.request_headers, name)


def _response_header(name: str) -> ValueFn:
    if name == ":status":
        return lambda r: str(r.status) if r.status else None
    if name.startswith(":"):
        return lambda r: None
    return lambda r: _first(r.response_headers, name)


_GRPC_CAMEL: Final = (
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
    "Unauthenticated")
_GRPC_SNAKE: Final = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED")

_WHITESPACE_TO_UNDERSCORE: Final = str.maketrans(dict.fromkeys(" \t\n\r\f\v", "_"))


# --- START_TIME ---------------------------------------------------------------------------

def _time_formatter(fmt: str | None) -> Callable[[float], str]:
    """A renderer for ``%START_TIME(fmt)%`` (UTC). Envoy's extra specifiers: ``%s``
    (epoch seconds), ``%f``/``%1f``..``%9f`` (fraction digits, 9 by default). The
    strftime part is cached per second: a busy log formats it once a second."""
    if fmt is None:
        fmt = "%Y-%m-%dT%H:%M:%S.%3fZ"
    # segments: (kind, arg): "t" strftime text, "s" epoch seconds, "f" fraction digits
    segments: list[tuple[str, str | int]] = []
    chunk: list[str] = []
    i, n = 0, len(fmt)
    while i < n:
        c = fmt[i]
        if c != "%" or i + 1 >= n:
            chunk.append(c)
            i += 1
            continue
        nxt = fmt[i + 1]
        digits = 9
        if nxt in "123456789" and i + 2 < n and fmt[i + 2] == "f":
            digits, width = int(nxt), 3
        elif nxt == "f":
            width = 2
        elif nxt == "s":
            if chunk:
                segments.append(("t", "".join(chunk)))
                chunk = []
            segments.append(("s", 0))
            i += 2
            continue
        else:
            chunk.append(fmt[i:i + 2])  # strftime's own, %% included
            i += 2
            continue
        if chunk:
            segments.append(("t", "".join(chunk)))
            chunk = []
        segments.append(("f", digits))
        i += width
    if chunk:
        segments.append(("t", "".join(chunk)))
    # Per second, the text between fraction slots is fixed: cache it as `pieces`.
    digits_list = tuple(int(arg) for kind, arg in segments if kind == "f")
    divisors = tuple(10 ** (9 - d) for d in digits_list)
    widths = tuple(f"0{d}d" for d in digits_list)
    frozen = tuple(segments)
    cache: list[tuple[int, tuple[str, ...]]] = [(-1, ())]

    def pieces_for(seconds: int) -> tuple[str, ...]:
        tm = time.gmtime(seconds)
        pieces: list[str] = []
        current: list[str] = []
        for kind, arg in frozen:
            if kind == "f":
                pieces.append("".join(current))
                current = []
            else:
                current.append(time.strftime(str(arg), tm) if kind == "t" else str(seconds))
        pieces.append("".join(current))
        return tuple(pieces)

    def render(start: float) -> str:
        micros = round(start * 1_000_000)
        seconds, fraction = divmod(micros, 1_000_000)
        cached = cache[0]
        if cached[0] != seconds:
            cached = (seconds, pieces_for(seconds))
            cache[0] = cached  # one tuple store: safe to share between threads
        pieces = cached[1]
        if not divisors:
            return pieces[0]
        nanos = fraction * 1000
        if len(divisors) == 1:
            return f"{pieces[0]}{nanos // divisors[0]:{widths[0]}}{pieces[1]}"
        out = [pieces[0]]
        for k, divisor in enumerate(divisors):
            out.append(f"{nanos // divisor:{widths[k]}}")
            out.append(pieces[k + 1])
        return "".join(out)

    return render


# --- operators ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Operator:
    """One parsed command operator: ``value`` reads it from a record (None: missing),
    ``text`` renders it for a text line (``-``: missing); ``numeric`` ones are JSON
    numbers."""

    name: str
    source: str
    column: int
    value: ValueFn
    text: Callable[[CallRecord], str]
    numeric: bool = False


class _Spec:
    """How to build an operator: whether it takes an argument, the factory, and for
    argument-less ones an optional direct text reader (one call less per line)."""

    __slots__ = ("arg", "build", "numeric", "text")

    def __init__(self, build: Callable[[str | None], ValueFn], *, arg: str = "no",
                 numeric: bool = False,
                 text: Callable[[CallRecord], str] | None = None) -> None:
        self.build, self.arg, self.numeric, self.text = build, arg, numeric, text


def _plain(fn: ValueFn, *, numeric: bool = False) -> _Spec:
    return _Spec(lambda arg: fn, numeric=numeric)


def _field(attr: str) -> _Spec:
    """An optional string field of the record (empty counts as missing)."""
    get = operator.attrgetter(attr)
    return _Spec(lambda arg: lambda r: get(r) or None, text=lambda r: get(r) or "-")


def _count(attr: str) -> _Spec:
    """An integer field of the record (a JSON number)."""
    get = operator.attrgetter(attr)
    return _Spec(lambda arg: get, numeric=True, text=lambda r: str(get(r)))


def _headers(reader: Callable[[str], ValueFn]) -> _Spec:
    def build(arg: str | None) -> ValueFn:
        assert arg is not None
        names = arg.split("?")
        if len(names) > 2 or not all(n.strip() for n in names):
            raise ValueError(f"expected HEADER or HEADER?ALTERNATIVE, got {arg!r}")
        readers = [reader(n.strip().lower()) for n in names]
        if len(readers) == 1:
            return readers[0]
        main, alternative = readers

        def either(r: CallRecord) -> Value:
            value = main(r)
            return alternative(r) if value is None else value

        return either

    return _Spec(build, arg="required")


def _details(arg: str | None) -> ValueFn:
    if arg == "ALLOW_WHITESPACES":
        return lambda r: r.response_code_details
    if arg is not None:
        raise ValueError(f"the only argument is ALLOW_WHITESPACES, got {arg!r}")
    seen: dict[str, str] = {}

    def details(r: CallRecord) -> Value:
        raw = r.response_code_details
        if raw is None:
            return None
        clean = seen.get(raw)
        if clean is None:
            if len(seen) > 1024:  # details are a small vocabulary; stay bounded anyway
                seen.clear()
            clean = seen[raw] = raw.translate(_WHITESPACE_TO_UNDERSCORE)
        return clean

    return details


def _start_time(arg: str | None) -> ValueFn:
    render = _time_formatter(arg)
    return lambda r: render(r.start_time)


def _grpc_status(arg: str | None) -> ValueFn:
    if arg == "NUMBER":
        return lambda r: r.grpc_status
    if arg not in (None, "CAMEL_STRING", "SNAKE_STRING"):
        raise ValueError(f"expected CAMEL_STRING, SNAKE_STRING or NUMBER, got {arg!r}")
    names = _GRPC_SNAKE if arg == "SNAKE_STRING" else _GRPC_CAMEL

    def status(r: CallRecord) -> Value:
        code = r.grpc_status
        if code is None:
            return None
        return names[code] if 0 <= code < len(names) else str(code)

    return status


def _address_without_port(read: Callable[[CallRecord], str | None]) -> _Spec:
    def build(arg: str | None) -> ValueFn:
        if arg is None:
            return lambda r: _without_port(read(r))
        if not arg.isdigit() or int(arg) > 128:
            raise ValueError(f"expected a mask prefix length 0-128, got {arg!r}")
        prefix = int(arg)

        def masked(r: CallRecord) -> Value:
            host = _without_port(read(r))
            if host is None:
                return None
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                return host
            bits = min(prefix, ip.max_prefixlen)
            return ipaddress.ip_network(f"{ip}/{bits}", strict=False).with_prefixlen

        return masked

    return _Spec(build, arg="optional")


_OPERATORS: Final[Mapping[str, _Spec]] = {
    "START_TIME": _Spec(_start_time, arg="optional"),
    "REQ": _headers(_request_header),
    "REQUEST_HEADER": _headers(_request_header),
    "RESP": _headers(_response_header),
    "RESPONSE_HEADER": _headers(_response_header),
    "PROTOCOL": _field("protocol"),
    "RESPONSE_CODE": _count("status"),
    "RESPONSE_FLAGS": _Spec(lambda arg: lambda r: r.response_flags or "-",
                            text=lambda r: r.response_flags or "-"),
    "RESPONSE_CODE_DETAILS": _Spec(_details, arg="optional"),
    "CONNECTION_TERMINATION_DETAILS": _Spec(lambda arg: lambda r: None, text=lambda r: "-"),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": _field("upstream_transport_failure_reason"),
    "BYTES_RECEIVED": _count("bytes_received"),
    "BYTES_SENT": _count("bytes_sent"),
    "DURATION": _plain(lambda r: _millis(r.duration), numeric=True),
    "REQUEST_DURATION": _plain(lambda r: None, numeric=True),
    "RESPONSE_DURATION": _plain(lambda r: _millis(r.response_duration), numeric=True),
    "UPSTREAM_HOST": _field("upstream_host"),
    "UPSTREAM_REMOTE_ADDRESS": _field("upstream_host"),
    "UPSTREAM_CLUSTER": _field("upstream_cluster"),
    "UPSTREAM_CLUSTER_RAW": _field("upstream_cluster"),
    "UPSTREAM_LOCAL_ADDRESS": _field("upstream_local_address"),
    "DOWNSTREAM_LOCAL_ADDRESS": _field("downstream_local_address"),
    "DOWNSTREAM_REMOTE_ADDRESS": _field("downstream_remote_address"),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
        _address_without_port(lambda r: r.downstream_local_address),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":
        _address_without_port(lambda r: r.downstream_remote_address),
    "REQUESTED_SERVER_NAME": _field("requested_server_name"),
    "ROUTE_NAME": _field("route_name"),
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": _count("attempts"),
    "TRACE_ID": _field("trace_id"),
    "GRPC_STATUS": _Spec(_grpc_status, arg="optional"),
    "GRPC_STATUS_NUMBER": _plain(lambda r: r.grpc_status, numeric=True),
}
"""Every supported command operator, by name."""

SUPPORTED_OPERATORS: Final[frozenset[str]] = frozenset(_OPERATORS)
"""The names :func:`compile_format` accepts."""

_NAME_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _error(text: str, column: int, message: str) -> ConfigError:
    return ConfigError(f"access log format {text!r}: {message} at column {column}")


def _parse(text: str) -> list[str | Operator]:
    """``text`` as literal strings and operators; raises ConfigError on a bad operator."""
    parts: list[str | Operator] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        pct = text.find("%", i)
        if pct < 0:
            literal.append(text[i:])
            break
        literal.append(text[i:pct])
        if text.startswith("%%", pct):
            literal.append("%")
            i = pct + 2
            continue
        column = pct + 1
        j = pct + 1
        while j < n and text[j] in _NAME_CHARS:
            j += 1
        name = text[pct + 1:j]
        if not name:
            raise _error(text, column, "'%' does not start an operator (write %% for a "
                                       "literal percent sign)")
        arg: str | None = None
        if j < n and text[j] == "(":
            close = text.find(")", j)
            if close < 0:
                raise _error(text, column, f"%{name}( has no closing ')'")
            arg, j = text[j + 1:close], close + 1
        max_length: int | None = None
        if j < n and text[j] == ":":
            k = j + 1
            while k < n and text[k].isdigit():
                k += 1
            if k == j + 1:
                raise _error(text, column, f"%{name}% expects a length after ':'")
            max_length, j = int(text[j + 1:k]), k
        if j >= n or text[j] != "%":
            raise _error(text, column, f"operator %{name} is not closed with '%'")
        source = text[pct:j + 1]
        i = j + 1
        spec = _OPERATORS.get(name)
        if spec is None:
            raise _error(text, column, f"unknown operator %{name}%")
        if spec.arg == "required" and not arg:
            raise _error(text, column, f"{source} needs an argument, e.g. %{name}(X)%")
        if spec.arg == "no" and arg is not None:
            raise _error(text, column, f"{source} takes no argument")
        try:
            fn = spec.build(arg)
        except ValueError as err:
            raise _error(text, column, f"{source}: {err}") from None
        if max_length is not None:
            fn = _truncated(fn, max_length)
        if "".join(literal):
            parts.append("".join(literal))
        literal = []
        numeric = spec.numeric or (name == "GRPC_STATUS" and arg == "NUMBER")
        text_fn = spec.text if spec.text is not None and max_length is None else _text(fn)
        parts.append(Operator(name, source, column, fn, text_fn, numeric))
    if "".join(literal):
        parts.append("".join(literal))
    return parts


def _truncated(fn: ValueFn, length: int) -> ValueFn:
    def cut(r: CallRecord) -> Value:
        value = fn(r)
        return value[:length] if isinstance(value, str) else value
    return cut


def _text(fn: ValueFn) -> Callable[[CallRecord], str]:
    """An operator as text: ``-`` when missing."""
    def text(r: CallRecord) -> str:
        value = fn(r)
        if value is None:
            return "-"
        return value if value.__class__ is str else str(value)
    return text


# --- formatters ---------------------------------------------------------------------------

class Formatter:
    """A compiled access-log format: call it with a record to get one line.

    ``operators`` lists the parsed operators in order (for tests and introspection).
    """

    __slots__ = ("_render", "operators", "text")

    def __init__(self, text: str, render: Callable[[CallRecord], str],
                 operators: Sequence[Operator]) -> None:
        self.text = text
        self.operators: tuple[Operator, ...] = tuple(operators)
        self._render = render

    def __call__(self, record: CallRecord) -> str:
        """The formatted line for ``record`` (no trailing newline)."""
        return self._render(record)

    def __repr__(self) -> str:
        return f"Formatter({self.text!r})"


def _text_renderer(parts: Sequence[str | Operator]) -> Callable[[CallRecord], str]:
    """Literal text and operators as one ``%``-template filled from a tuple of strings."""
    template = "".join(p.replace("%", "%%") if isinstance(p, str) else "%s" for p in parts)
    fns = tuple(p.text for p in parts if isinstance(p, Operator))
    if not fns:
        constant = template.replace("%%", "%")
        return lambda r: constant
    if len(fns) == 1:
        only = fns[0]
        return lambda r: template % (only(r),)
    return lambda r: template % tuple([fn(r) for fn in fns])


def compile_format(text: str) -> Formatter:
    """Parse an Envoy access-log format once; raises ConfigError naming a bad operator
    and its column. One trailing newline is dropped: :mod:`logging` adds its own."""
    body = text[:-1] if text.endswith("\n") else text
    parts = _parse(body)
    operators = [p for p in parts if isinstance(p, Operator)]
    return Formatter(text, _text_renderer(parts), operators)


def _json_value(parts: Sequence[str | Operator]) -> Callable[[CallRecord], Value]:
    """One JSON field: a lone operator keeps its type (number, string, null); anything
    with literal text around it is a string."""
    if len(parts) == 1 and isinstance(parts[0], Operator):
        return parts[0].value
    return _text_renderer(parts)


def compile_json(labels: Mapping[str, str]) -> Formatter:
    """A formatter writing one compact JSON object per record, keys in ``labels``'
    order; raises ConfigError (naming the key) on a bad operator."""
    fields: list[tuple[str, Callable[[CallRecord], Value]]] = []
    operators: list[Operator] = []
    for key, fmt in labels.items():
        try:
            parts = _parse(fmt)
        except ConfigError as err:
            raise ConfigError(f"access log JSON key {key!r}: {err}") from None
        operators.extend(p for p in parts if isinstance(p, Operator))
        fields.append((key, _json_value(parts)))
    # Keys are encoded once; values with the C string encoder. Faster than building a
    # dict for json.dumps, and the output is the same compact JSON.
    frozen = tuple((json.dumps(key, ensure_ascii=False) + ":", fn) for key, fn in fields)

    def render(record: CallRecord) -> str:
        out = []
        for prefix, fn in frozen:
            value = fn(record)
            if value is None:
                out.append(prefix + "null")
            elif isinstance(value, str):
                out.append(prefix + _encode_string(value))
            else:
                out.append(prefix + str(int(value)))
        return "{" + ",".join(out) + "}"

    return Formatter(json.dumps(dict(labels)), render, operators)


# --- logging ------------------------------------------------------------------------------

_internal = logging.getLogger("meshsdk.telemetry")


class AccessLogger:
    """Writes one line per record through :mod:`logging` (INFO), when ``filter`` (if
    any) accepts the record. Never raises into the request path."""

    __slots__ = ("filter", "formatter", "logger")

    def __init__(self, formatter: Callable[[CallRecord], str], *,
                 logger: logging.Logger | None = None,
                 filter: Callable[[CallRecord], bool] | None = None) -> None:
        self.formatter = formatter
        self.logger = logger if logger is not None else logging.getLogger(ACCESS_LOGGER)
        self.filter = filter

    def log(self, record: CallRecord) -> None:
        """Format and log ``record`` (the record rides along as ``mesh_call``)."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        try:
            if self.filter is not None and not self.filter(record):
                return
            line = self.formatter(record)
        except Exception:
            _internal.warning("access log entry dropped: its filter or format failed",
                              exc_info=True)
            return
        logger.info(line, extra={"mesh_call": record})


class _StdStream(logging.StreamHandler[TextIO]):
    """A handler on ``sys.stdout``/``sys.stderr`` as they are when a line is written
    (pytest and other tools swap them), not as they were when it was created."""

    def __init__(self, name: str) -> None:
        self._stream_name = name
        super().__init__()

    @property
    def stream(self) -> TextIO:
        stream: TextIO = getattr(sys, self._stream_name)
        return stream

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def file_handler(path: str) -> logging.Handler:
    """A handler writing bare lines to ``path``: ``/dev/stdout`` and ``/dev/stderr`` go
    to the process's current streams, anything else to a file (appended; a path that
    cannot be opened is a ConfigError)."""
    handler: logging.Handler
    if path in ("/dev/stdout", "/dev/stderr"):
        handler = _StdStream(path.rpartition("/")[2])
    else:
        try:
            handler = logging.FileHandler(path, encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"access log path {path!r} cannot be opened: {err}") from None
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


__all__ = ["ACCESS_LOGGER", "DEFAULT_JSON_LABELS", "DEFAULT_TEXT_FORMAT",
           "SUPPORTED_OPERATORS", "AccessLogger", "Formatter", "Operator", "Value",
           "compile_format", "compile_json", "file_handler"]
