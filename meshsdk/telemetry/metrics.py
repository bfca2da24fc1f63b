"""Istio's four HTTP/gRPC request metrics, recorded from a :class:`CallRecord`.

=======================================  ==========  =========================  ===========
Prometheus name                          kind        Telemetry API selector     unit
=======================================  ==========  =========================  ===========
``istio_requests_total``                 counter     ``REQUEST_COUNT``          (none)
``istio_request_duration_milliseconds``  histogram   ``REQUEST_DURATION``       ms
``istio_request_bytes``                  histogram   ``REQUEST_SIZE``           bytes
``istio_response_bytes``                 histogram   ``RESPONSE_SIZE``          bytes
=======================================  ==========  =========================  ===========

Two sinks implement :class:`MetricsSink`: :class:`OtelMetrics` records through the
OpenTelemetry metrics API (whatever SDK and exporter the user installed), and
:class:`PrometheusMetrics` keeps the aggregates itself and serves them through a
``prometheus_client`` registry, with no OTel pipeline at all. Both take a
:class:`MetricsView` (what the Telemetry policy decided for this side: disabled metrics
and tag overrides) and a :class:`LabelGuard` (the cardinality bound).

Sizes (:func:`request_size`, :func:`response_size`) follow Envoy's ``request.total_size``
/ ``response.total_size``, which Istio reports: body bytes plus the header block, each
header counted as ``len(name) + len(value)`` (Envoy's ``HeaderMap::byteSize``, no
separators). The pseudo-headers Envoy holds in its header map are counted from the
record (``:method``, ``:path``, ``:authority``, ``:scheme`` on requests, ``:status`` on
responses); a ``host`` header is skipped because Envoy keeps it as ``:authority``.
Lengths are in characters, equal to bytes for the ASCII that header values are.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from types import MappingProxyType
from typing import Final, Protocol

from opentelemetry.context import Context
from opentelemetry.metrics import (
    CallbackOptions,
    Histogram,
    MeterProvider,
    Observation,
    get_meter_provider,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from meshsdk.telemetry import otel_runtime
from meshsdk.telemetry.deferred import DeferredQueue, Drainer
from meshsdk.telemetry.labels import BYTES_BUCKETS, DURATION_BUCKETS_MS, LABEL_NAMES, istio_labels
from meshsdk.telemetry.record import UNKNOWN, CallRecord

# --- names ------------------------------------------------------------------------------

ALL_METRICS: Final = "ALL_METRICS"
REQUEST_COUNT: Final = "REQUEST_COUNT"
REQUEST_DURATION: Final = "REQUEST_DURATION"
REQUEST_SIZE: Final = "REQUEST_SIZE"
RESPONSE_SIZE: Final = "RESPONSE_SIZE"

HTTP_METRICS: tuple[str, ...] = (REQUEST_COUNT, REQUEST_DURATION, REQUEST_SIZE, RESPONSE_SIZE)
"""The Telemetry API selectors of the metrics this module records, in that order."""

METRIC_NAMES: Mapping[str, str] = MappingProxyType({
    REQUEST_COUNT: "istio_requests_total",
    REQUEST_DURATION: "istio_request_duration_milliseconds",
    REQUEST_SIZE: "istio_request_bytes",
    RESPONSE_SIZE: "istio_response_bytes",
})
"""Selector -> the metric name as Prometheus scrapes it (what dashboards query)."""

METRIC_SELECTORS: frozenset[str] = frozenset({
    ALL_METRICS, *HTTP_METRICS,
    "TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS", "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES",
})
"""Every ``metric`` value Istio's Telemetry API accepts; only :data:`HTTP_METRICS` are
recorded by the sinks of this module."""

_DESCRIPTIONS: Mapping[str, str] = MappingProxyType({
    REQUEST_COUNT: "Requests handled, as Istio's istio_requests_total.",
    REQUEST_DURATION: "Request duration in milliseconds, first request byte to last "
                      "response byte.",
    REQUEST_SIZE: "Request size in bytes: body plus header block (Envoy's "
                  "request.total_size).",
    RESPONSE_SIZE: "Response size in bytes: body plus header block (Envoy's "
                   "response.total_size).",
})

OTHER: Final = "other"
"""The value a label takes when the :class:`LabelGuard` refuses the real one."""

_INVALID_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_]")

TagValue = Callable[[CallRecord], str]
"""Computes one tag (label) value from a record: a compiled Telemetry ``value``
expression, usually."""


def label_name(tag: str) -> str:
    """``tag`` as a Prometheus label name: characters outside ``[A-Za-z0-9_]`` become
    ``_``, and a leading digit or a reserved leading ``__`` gets an ``_`` in front."""
    name = _INVALID_LABEL_CHARS.sub("_", tag)
    if name[:1].isdigit():
        name = "_" + name
    if name.startswith("__"):
        name = "_" + name.lstrip("_")
    return name


# --- sizes ------------------------------------------------------------------------------

# len(":method") + len(":path") + len(":authority") + len(":scheme")
_REQUEST_PSEUDO = 7 + 5 + 10 + 7
_STATUS_PSEUDO = 7 + 3        # ":status" + three digits


def request_size(record: CallRecord) -> int:
    """Request bytes as Istio's ``istio_request_bytes`` counts them: body + headers.

    See the module docstring for how the header block is measured."""
    size = (record.bytes_received + _REQUEST_PSEUDO + len(record.method) + len(record.path)
            + len(record.authority) + len(record.scheme))
    if record.request_header_bytes is not None:  # the driver measured the head
        return size + record.request_header_bytes
    for name, value in record.request_headers:
        if name != "host" and name[:1] != ":":
            size += len(name) + len(value)
    return size


def response_size(record: CallRecord) -> int:
    """Response bytes as Istio's ``istio_response_bytes`` counts them: body + headers
    (with ``:status`` when a response was sent)."""
    size = record.bytes_sent + (_STATUS_PSEUDO if record.status else 0)
    if record.response_header_bytes is not None:  # the driver measured the raw head
        return size + record.response_header_bytes
    for name, value in record.response_headers:
        if name[:1] != ":":
            size += len(name) + len(value)
    return size


# --- the view ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MetricsView:
    """What the Telemetry policy decided for one side (client or server) of a workload.

    ``disabled`` holds metric selectors (``REQUEST_COUNT`` ...; ``ALL_METRICS`` disables
    every one). ``overrides`` maps a selector (or ``ALL_METRICS``, which the specific
    selector's entries override tag by tag) to ``{tag: value function}``; a function
    UPSERTs the tag (replacing a standard label in place, or adding a new label after
    the standard ones, sorted by name), ``None`` REMOVEs it. Selectors other than the
    four of :data:`HTTP_METRICS` (TCP, gRPC messages, a ``customMetric`` name) are kept
    but change nothing here. Tag names are made valid Prometheus label names the way
    Envoy's exposition does (:func:`label_name`); an empty one is dropped (the config
    validator reports it).

    Both mappings are copied read-only on construction, so a view is immutable; the
    sinks compile it once (label names, which values come from where) and keep the
    result on the view, so reuse one view object per policy and side rather than
    building one per request.
    """

    disabled: frozenset[str] = frozenset()
    overrides: Mapping[str, Mapping[str, TagValue | None]] = field(
        default_factory=lambda: MappingProxyType({}))
    _plan: tuple[_Group, ...] | None = field(default=None, init=False, repr=False,
                                             compare=False)

    def __post_init__(self) -> None:
        overrides: dict[str, Mapping[str, TagValue | None]] = {}
        for metric, tags in self.overrides.items():
            clean: dict[str, TagValue | None] = {}
            for tag, fn in tags.items():
                if tag:
                    clean[label_name(tag)] = fn
            overrides[metric] = MappingProxyType(clean)
        object.__setattr__(self, "disabled", frozenset(self.disabled))
        object.__setattr__(self, "overrides", MappingProxyType(overrides))

    def __hash__(self) -> int:
        # Consistent with the generated __eq__ (it hashes a part of what __eq__ compares);
        # the override functions themselves need not be hashable.
        return hash((self.disabled, tuple(sorted(self.overrides))))

    def enabled(self, metric: str) -> bool:
        """Whether ``metric`` (a selector) is recorded under this view."""
        return metric not in self.disabled and ALL_METRICS not in self.disabled

    def groups(self) -> tuple[_Group, ...]:
        """The compiled view: one group per distinct label layout (usually one)."""
        plan = self._plan
        if plan is None:
            plan = _compile(self)
            object.__setattr__(self, "_plan", plan)
        return plan


class _Layout:
    """The metrics of a view that share one label layout, interned: equal layouts are
    one object, so sinks key their series by it at the cost of an identity hash."""

    __slots__ = ("metrics", "names", "request_size", "response_size")

    def __init__(self, metrics: tuple[str, ...], names: tuple[str, ...]) -> None:
        self.metrics = metrics
        self.names = names
        self.request_size = REQUEST_SIZE in metrics
        self.response_size = RESPONSE_SIZE in metrics


_LAYOUTS: dict[tuple[tuple[str, ...], tuple[str, ...]], _Layout] = {}


def _layout(metrics: tuple[str, ...], names: tuple[str, ...]) -> _Layout:
    return _LAYOUTS.setdefault((metrics, names), _Layout(metrics, names))


class _Group:
    """One layout of a compiled view and how to get each label value from a record:
    an index into :func:`istio_labels` or a tag function."""

    __slots__ = ("_fns", "_take", "identity", "layout", "metrics", "names")

    def __init__(self, metrics: tuple[str, ...], tags: Mapping[str, TagValue | None]) -> None:
        names: list[str] = []
        ops: list[int | TagValue] = []
        for i, name in enumerate(LABEL_NAMES):
            if name not in tags:
                names.append(name)
                ops.append(i)
            elif (fn := tags[name]) is not None:   # UPSERT of a standard label
                names.append(name)
                ops.append(fn)
        for name in sorted(set(tags) - set(LABEL_NAMES)):
            if (fn := tags[name]) is not None:     # a new label; REMOVE of one is a no-op
                names.append(name)
                ops.append(fn)
        self.metrics = metrics
        self.names: tuple[str, ...] = tuple(names)
        self.layout = _layout(metrics, self.names)
        self.identity = self.names == LABEL_NAMES and all(isinstance(op, int) for op in ops)
        indices = [op for op in ops if isinstance(op, int)]
        # the standard values kept, in order, then the tag functions by final position
        self._take: Callable[[tuple[str, ...]], tuple[str, ...]] = (
            itemgetter(*indices) if len(indices) > 1
            else (lambda base: (base[indices[0]],)) if indices else (lambda base: ()))
        self._fns: tuple[tuple[int, TagValue], ...] = tuple(
            (pos, op) for pos, op in enumerate(ops) if not isinstance(op, int))

    def values(self, record: CallRecord) -> tuple[str, ...]:
        """The label values of ``record`` in :attr:`names` order."""
        base = istio_labels(record)
        if self.identity:
            return base
        kept = self._take(base)
        if not self._fns:
            return kept
        out = list(kept)
        for pos, fn in self._fns:
            out.insert(pos, _tag(fn, record))
        return tuple(out)


def _tag(fn: TagValue, record: CallRecord) -> str:
    # A failing expression yields "unknown", as Istio's stats filter does; it never
    # fails the request.
    try:
        value = fn(record)
    except Exception:
        return UNKNOWN
    return value if isinstance(value, str) else str(value)


def _compile(view: MetricsView) -> tuple[_Group, ...]:
    common = view.overrides.get(ALL_METRICS, {})
    layouts: dict[tuple[tuple[str, TagValue | None], ...], list[str]] = {}
    for metric in HTTP_METRICS:
        if not view.enabled(metric):
            continue
        tags = {**common, **view.overrides.get(metric, {})}
        layouts.setdefault(tuple(sorted(tags.items(), key=lambda kv: kv[0])), []).append(metric)
    return tuple(_Group(tuple(metrics), dict(layout)) for layout, metrics in layouts.items())


DEFAULT_VIEW: Final = MetricsView()
"""Every metric on, Istio's standard labels: what a mesh without Telemetry resources
reports."""


class MetricsSink(Protocol):
    """Records one finished request into metrics; called once per request and side.

    A sink may also have a ``close()`` method: :meth:`Telemetry.close` calls it (the OTel
    sink records what it still holds queued)."""

    def record(self, record: CallRecord, view: MetricsView = DEFAULT_VIEW) -> None: ...


# --- the cardinality guard --------------------------------------------------------------

_Labels = tuple[str, ...]


class LabelGuard:
    """Bounds the number of series a sink creates.

    None of Istio's labels comes from the request path or query, so cardinality is
    normally bounded by the mesh's own names. The exceptions are values taken from
    outside the mesh: ``destination_service`` of passthrough traffic is the authority of
    whatever external host the app called, and a custom tag may compute anything. So:

    * each label name keeps at most ``max_values_per_label`` distinct values; a value
      beyond that is reported as ``"other"`` and counted in :attr:`overflowed`
      (label name -> replacements, one per record and metric group);
    * each metric keeps at most ``max_series_per_metric`` distinct label sets; a record
      that would add one more is reported in a single all-``"other"`` series and
      counted in :attr:`series_overflowed` (metric selector -> records folded).

    Values and series once admitted stay admitted (the counters are cumulative). Thread
    safe; a label set seen before costs one dict lookup.
    """

    def __init__(self, max_values_per_label: int = 1000,
                 max_series_per_metric: int = 10_000) -> None:
        if max_values_per_label < 1 or max_series_per_metric < 1:
            raise ValueError("LabelGuard bounds must be at least 1")
        self.max_values_per_label = max_values_per_label
        self.max_series_per_metric = max_series_per_metric
        self.overflowed: dict[str, int] = {}
        self.series_overflowed: dict[str, int] = {}
        self._lock = threading.Lock()
        self._values: dict[str, set[str]] = {}
        self._series: dict[str, set[tuple[_Labels, _Labels]]] = {}
        # (metrics, names, values) -> values, for label sets admitted unchanged
        self._known: dict[tuple[tuple[str, ...], _Labels, _Labels], _Labels] = {}

    def admit(self, metrics: tuple[str, ...], names: _Labels, values: _Labels) -> _Labels:
        """The values to report for a record of ``metrics`` with these labels."""
        known = self._known.get((metrics, names, values))
        if known is not None:
            return known
        return self._admit_new(metrics, names, values)

    def _admit_new(self, metrics: tuple[str, ...], names: _Labels, values: _Labels) -> _Labels:
        with self._lock:
            out = list(values)
            new_values: list[tuple[set[str], str]] = []
            replaced: list[str] = []
            # names are distinct within a layout, so each label is checked once here
            for i, (name, value) in enumerate(zip(names, values, strict=True)):
                seen = self._values.setdefault(name, set())
                if value in seen:
                    continue
                if len(seen) < self.max_values_per_label:
                    new_values.append((seen, value))
                else:
                    out[i] = OTHER
                    replaced.append(name)
            admitted = tuple(out) if replaced else values
            key = (names, admitted)
            series = [self._series.setdefault(m, set()) for m in metrics]
            if any(key not in s and len(s) >= self.max_series_per_metric for s in series):
                for m in metrics:
                    self.series_overflowed[m] = self.series_overflowed.get(m, 0) + 1
                return (OTHER,) * len(names)
            for name in replaced:
                self.overflowed[name] = self.overflowed.get(name, 0) + 1
            for seen, value in new_values:
                seen.add(value)
            for s in series:
                s.add(key)
            if not replaced:
                self._known[(metrics, names, values)] = admitted
            return admitted


# --- OpenTelemetry ----------------------------------------------------------------------

_SCOPE = "meshsdk.telemetry"


class OtelMetrics:
    """A :class:`MetricsSink` over the OpenTelemetry metrics API only.

    ``meter_provider`` None uses the global provider: a no-op until the application
    installs an SDK (the proxy meter then forwards to it). The histograms carry Istio's
    bucket bounds as ``explicit_bucket_boundaries_advisory``; an SDK view may override
    them. The OTel SDK applies its own cardinality limit (2000 attribute sets per
    instrument by default) besides this sink's :class:`LabelGuard`.

    Recording is deferred (:mod:`meshsdk.telemetry.deferred`): :meth:`record` queues
    one tuple per call and returns; the SDK's per-measurement work (cleaning and hashing 25
    attributes, three histograms) happens in a drainer thread, or in the reader at
    collection time: ``istio_requests_total`` is an observable counter whose callback
    first drains the queue, so every collection sees every call finished before it.
    :meth:`flush` drains on demand; ``deferred=False`` records inline instead.
    """

    def __init__(self, meter_provider: MeterProvider | None = None, *,
                 guard: LabelGuard | None = None, deferred: bool = True,
                 drainer: Drainer | None = None) -> None:
        provider = meter_provider if meter_provider is not None else get_meter_provider()
        meter = provider.get_meter(_SCOPE)
        self.guard = guard if guard is not None else LabelGuard()
        # Counter name: the OTel spec's Prometheus mapping adds "_total" to a monotonic
        # sum only when the name does not already end in it, and the Python exporter
        # builds a prometheus_client CounterMetricFamily, which strips a trailing
        # "_total" from the family name and writes it back on the sample. Either way
        # "istio_requests_total" scrapes as exactly istio_requests_total. Naming the
        # instrument "istio_requests" would scrape the same by default, but not with an
        # exporter whose "_total" suffixing is turned off (the spec asks exporters to
        # offer that switch), nor in OTLP backends that keep the name as is. The unit
        # stays empty: "1" would become a "_ratio" suffix under the same rules. The
        # histogram units "ms" and "By" map to "milliseconds"/"bytes", which the names
        # already end in, so no suffix is added there either.
        # The counter is observable: it exports the same monotonic sum as a Counter, and
        # its callback is the collection-time hook that drains the deferred queue.
        self._lock = threading.Lock()
        self._counts: dict[_CountKey, _Count] = {}
        meter.create_observable_counter(
            METRIC_NAMES[REQUEST_COUNT], callbacks=[self._observe_requests], unit="",
            description=_DESCRIPTIONS[REQUEST_COUNT])
        self._duration: Histogram = meter.create_histogram(
            METRIC_NAMES[REQUEST_DURATION], unit="ms",
            description=_DESCRIPTIONS[REQUEST_DURATION],
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_MS)
        self._request_bytes: Histogram = meter.create_histogram(
            METRIC_NAMES[REQUEST_SIZE], unit="By", description=_DESCRIPTIONS[REQUEST_SIZE],
            explicit_bucket_boundaries_advisory=BYTES_BUCKETS)
        self._response_bytes: Histogram = meter.create_histogram(
            METRIC_NAMES[RESPONSE_SIZE], unit="By", description=_DESCRIPTIONS[RESPONSE_SIZE],
            explicit_bucket_boundaries_advisory=BYTES_BUCKETS)
        # (layout, values) -> (count key, attributes), for label sets the guard admitted
        # unchanged
        self._attributes: dict[tuple[_Layout, _Labels], tuple[_CountKey, dict[str, str]]] = {}
        self._queue: DeferredQueue[_Measured] | None = (
            DeferredQueue(self._apply, drainer=drainer) if deferred else None)

    def record(self, record: CallRecord, view: MetricsView = DEFAULT_VIEW) -> None:
        """Record ``record`` into the instruments the view leaves enabled."""
        duration_ms = max(record.duration, 0.0) * 1000.0
        context = otel_runtime.get_current()  # exemplars: the span current at the call
        queue = self._queue
        for group in view.groups():
            layout = group.layout
            values = group.values(record)
            admitted = self._attributes.get((layout, values))
            if admitted is None:
                admitted = self._admit(layout, values)
            item = (admitted, layout, duration_ms,
                    request_size(record) if layout.request_size else 0,
                    response_size(record) if layout.response_size else 0, context)
            if queue is not None:
                queue.put(item)
            else:
                with self._lock:
                    self._apply(item)

    def flush(self) -> None:
        """Record everything queued now (collection does this by itself)."""
        if self._queue is not None:
            self._queue.drain()

    def close(self) -> None:
        """Record what is queued and stop draining this sink in the background."""
        if self._queue is not None:
            self._queue.close()

    def _apply(self, item: _Measured) -> None:
        """One queued call's measurements into the instruments (under the queue's drain
        lock, or this sink's lock when recording inline); the counter is kept here,
        cumulative, and reported by :meth:`_observe_requests`."""
        (key, attributes), layout, duration_ms, request_bytes, response_bytes, context = item
        for metric in layout.metrics:
            if metric == REQUEST_COUNT:
                cell = self._counts.get(key)
                if cell is None:
                    cell = self._counts[key] = _Count(attributes)
                cell.count += 1
            elif metric == REQUEST_DURATION:
                self._duration.record(duration_ms, attributes, context)
            elif metric == REQUEST_SIZE:
                self._request_bytes.record(request_bytes, attributes, context)
            else:
                self._response_bytes.record(response_bytes, attributes, context)

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        """The counter's callback: drain first (the histograms land before the reader
        collects them), then report every series' cumulative count."""
        self.flush()
        with self._queue.lock if self._queue is not None else self._lock:
            return [Observation(c.count, c.attributes) for c in self._counts.values()]

    def _admit(self, layout: _Layout, values: _Labels) -> tuple[_CountKey, dict[str, str]]:
        admitted = self.guard.admit(layout.metrics, layout.names, values)
        result = ((layout, admitted), dict(zip(layout.names, admitted, strict=True)))
        if admitted == values:
            # bounded: the guard admits at most max_series_per_metric label sets unchanged
            self._attributes[(layout, values)] = result
        return result


class _Count:
    """The cumulative ``istio_requests_total`` of one label set."""

    __slots__ = ("attributes", "count")

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes
        self.count = 0


_CountKey = tuple[_Layout, _Labels]
_Measured = tuple[tuple[_CountKey, dict[str, str]], _Layout, float, int, int, Context]
"""One queued call of one label layout: the series' count key and attributes, the
layout, duration in ms, request and response bytes, and the context current at the
call (for exemplars)."""


# --- prometheus_client ------------------------------------------------------------------

_COUNT, _DURATION, _REQUEST_BYTES, _RESPONSE_BYTES = range(4)
_KIND = {REQUEST_COUNT: _COUNT, REQUEST_DURATION: _DURATION, REQUEST_SIZE: _REQUEST_BYTES,
         RESPONSE_SIZE: _RESPONSE_BYTES}
_BUCKETS: tuple[tuple[float, ...], ...] = ((), DURATION_BUCKETS_MS, BYTES_BUCKETS, BYTES_BUCKETS)


class _Series:
    """The aggregates of one label set: per metric of its layout, ``[count]`` for the
    counter or ``[per-bucket counts ..., +Inf bucket count, sum]`` for a histogram."""

    __slots__ = ("cells", "kinds", "names", "standard", "values")

    def __init__(self, layout: _Layout, values: _Labels) -> None:
        self.names = layout.names
        self.values = values
        self.kinds = tuple(_KIND[m] for m in layout.metrics)
        self.cells: tuple[list[float], ...] = tuple(
            [0] if kind == _COUNT else [0] * (len(_BUCKETS[kind]) + 2) for kind in self.kinds)
        # all four metrics in their usual order: PrometheusMetrics.record's straight path
        self.standard = self.kinds == (_COUNT, _DURATION, _REQUEST_BYTES, _RESPONSE_BYTES)


class PrometheusMetrics:
    """A :class:`MetricsSink` that aggregates in plain dicts and is scraped through a
    ``prometheus_client`` registry; no OTel SDK involved.

    ``registry`` None creates a private :class:`~prometheus_client.CollectorRegistry`
    (available as :attr:`registry`), so two sinks never clash in the global one.
    Series of one metric may have different label sets (a view REMOVEd a tag or added
    one); they are exposed as one family over the union of label names, a missing label
    written as the empty string, which Prometheus treats as the label being absent.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 guard: LabelGuard | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.guard = guard if guard is not None else LabelGuard()
        self._lock = threading.Lock()
        # (layout, admitted values) -> series; a record whose values the guard admitted
        # unchanged finds its series here with one lookup
        self._series: dict[tuple[_Layout, _Labels], _Series] = {}
        self.registry.register(_Collector(self))

    def record(self, record: CallRecord, view: MetricsView = DEFAULT_VIEW) -> None:
        """Add ``record`` to the aggregates of the metrics the view leaves enabled."""
        duration_ms = max(record.duration, 0.0) * 1000.0
        for group in view.groups():
            layout = group.layout
            values = group.values(record)
            series = self._series.get((layout, values))
            if series is None:
                series = self._admit(layout, values)
            # sizes outside the lock; a layout without them skips the header walk
            request_bytes = request_size(record) if layout.request_size else 0
            response_bytes = response_size(record) if layout.response_size else 0
            if series.standard:  # what nearly every call takes: no loop, no dispatch
                count, durations, requests, responses = series.cells
                with self._lock:
                    count[0] += 1
                    durations[bisect_left(DURATION_BUCKETS_MS, duration_ms)] += 1
                    durations[-1] += duration_ms
                    requests[bisect_left(BYTES_BUCKETS, request_bytes)] += 1
                    requests[-1] += request_bytes
                    responses[bisect_left(BYTES_BUCKETS, response_bytes)] += 1
                    responses[-1] += response_bytes
                continue
            with self._lock:
                for kind, cells in zip(series.kinds, series.cells, strict=True):
                    if kind == _COUNT:
                        cells[0] += 1
                        continue
                    value: float = (duration_ms if kind == _DURATION else
                             request_bytes if kind == _REQUEST_BYTES else response_bytes)
                    cells[bisect_left(_BUCKETS[kind], value)] += 1
                    cells[-1] += value

    def _admit(self, layout: _Layout, values: _Labels) -> _Series:
        admitted = self.guard.admit(layout.metrics, layout.names, values)
        with self._lock:
            series = self._series.get((layout, admitted))
            if series is None:
                series = self._series[(layout, admitted)] = _Series(layout, admitted)
        return series

    def _snapshot(self) -> list[tuple[_Series, tuple[list[float], ...]]]:
        with self._lock:
            return [(s, tuple(list(c) for c in s.cells)) for s in self._series.values()]


def _union(layouts: Iterator[_Labels]) -> _Labels:
    """The label names of a family: the standard ones present, in Istio's order, then
    the custom ones sorted."""
    present = {name for names in layouts for name in names}
    standard = [n for n in LABEL_NAMES if n in present]
    return (*standard, *sorted(present - set(standard)))


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client's own histograms write ``le``."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


class _Collector:
    """The ``prometheus_client`` custom collector over a :class:`PrometheusMetrics`."""

    def __init__(self, sink: PrometheusMetrics) -> None:
        self._sink = sink
        self._le = [(*(_le(b) for b in bounds), "+Inf") for bounds in _BUCKETS]

    def describe(self) -> list[Metric]:
        """The families without samples, so the registry can refuse a name clash."""
        return [self._family(kind, ()) for kind in range(4)]

    def _family(self, kind: int, names: _Labels) -> CounterMetricFamily | HistogramMetricFamily:
        metric = HTTP_METRICS[kind]
        if kind == _COUNT:
            return CounterMetricFamily(METRIC_NAMES[metric], _DESCRIPTIONS[metric],
                                       labels=names)
        return HistogramMetricFamily(METRIC_NAMES[metric], _DESCRIPTIONS[metric], labels=names)

    def collect(self) -> Iterator[Metric]:
        """One family per metric, series with equal exposed labels merged."""
        snapshot = self._sink._snapshot()
        for kind in range(4):
            rows = [(series.names, series.values, cells[series.kinds.index(kind)])
                    for series, cells in snapshot if kind in series.kinds]
            names = _union(row[0] for row in rows)
            merged: dict[_Labels, list[float]] = {}
            for row_names, row_values, cells in rows:
                if row_names != names:
                    have = dict(zip(row_names, row_values, strict=True))
                    row_values = tuple(have.get(n, "") for n in names)
                into = merged.get(row_values)
                if into is None:
                    merged[row_values] = cells
                else:
                    for i, cell in enumerate(cells):
                        into[i] += cell
            family = self._family(kind, names)
            if isinstance(family, CounterMetricFamily):
                for values, cells in merged.items():
                    family.add_metric(values, cells[0])
            else:
                le = self._le[kind]
                for values, cells in merged.items():
                    buckets: list[tuple[str, float]] = []
                    total = 0.0
                    for bound, cell in zip(le, cells[:-1], strict=True):
                        total += cell
                        buckets.append((bound, total))
                    family.add_metric(values, buckets, sum_value=cells[-1])
            yield family


__all__ = [
    "ALL_METRICS", "DEFAULT_VIEW", "HTTP_METRICS", "METRIC_NAMES", "METRIC_SELECTORS",
    "OTHER", "REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE",
    "LabelGuard", "MetricsSink", "MetricsView", "OtelMetrics", "PrometheusMetrics",
    "TagValue", "label_name", "request_size", "response_size",
]
