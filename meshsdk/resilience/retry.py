"""Retry decisions: Istio's ``retries`` (and the mesh default) with Envoy's meanings.

:func:`retry_policy` turns a route's ``HTTPRetry`` into a :class:`RetryPolicy` the way
pilot's ``retry.ConvertPolicy`` builds Envoy's; :func:`should_retry` says whether an
attempt's :class:`~meshsdk.outcome.Outcome` is retriable under it (Envoy's
``wouldRetryFromHeaders`` / ``wouldRetryFromReset``); :func:`backoff_delay` draws the
wait before retry *n*. Whether a retry actually goes out also depends on the retries
left (``attempts``), the route deadline, ``maxRetries`` and the retry budget: that
bookkeeping belongs to the driver.

``retryOn`` tokens, as Envoy's router applies them:

==========================  ==================================================================
token                       retries when
==========================  ==================================================================
``5xx``                     any 5xx answer; any attempt without an answer (connect failure,
                            refused stream, reset, per-try timeout)
``gateway-error``           502, 503, 504; any attempt without an answer, like ``5xx``
``reset``                   any attempt without an answer (connect failure, reset, refused
                            stream, per-try timeout)
``reset-before-request``    no answer and nothing of the request was sent yet (a connect
                            failure always; others when the driver says so)
``connect-failure``         the TCP/TLS connection could not be made (connect timeout too)
``refused-stream``          the server refused the HTTP/2 stream (REFUSED_STREAM)
``retriable-4xx``           409
``retriable-status-codes``  a status listed as a bare number in ``retryOn`` (Istio adds this
                            token itself when numbers are given)
``cancelled``,              gRPC requests whose answer carries that ``grpc-status``: 1, 4, 13,
``deadline-exceeded``,      8, 14
``internal``,
``resource-exhausted``,
``unavailable``
``envoy-ratelimited``,      never: they need response headers (``x-envoy-ratelimited``,
``retriable-headers``,      ``retriableHeaders``) or an HTTP/3 transport that meshsdk does not
``http3-post-connect-       have
failure``
==========================  ==================================================================

Our own overflow (``Failure.OVERFLOW``, UO) is never retried, whatever the tokens.
A per-try timeout is retried only by ``5xx``, ``gateway-error`` and ``reset`` (Envoy
treats it as a local reset after the request was sent). gRPC tokens are read only for
gRPC requests: a plain HTTP answer is not judged by a ``grpc-status``.

A request whose body cannot be sent again (``request_replayable=False``, e.g. a
streamed upload) is retried only when nothing of it was sent: Envoy buffers bodies
for retries and gives up retrying when the body outgrows its buffer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from meshsdk.config.kinds.virtual_service import HTTPRetry
from meshsdk.config.mesh import MeshConfig, MeshHttpRetry
from meshsdk.outcome import Failure, Outcome

ISTIO_DEFAULT_RETRY_ON: frozenset[str] = frozenset(
    {"connect-failure", "refused-stream", "unavailable", "cancelled"})
ISTIO_DEFAULT_ATTEMPTS = 2
DEFAULT_BACKOFF_BASE = 0.025

_GRPC_TOKENS = {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8,
                "internal": 13, "unavailable": 14}
_ANSWERLESS_ANY = frozenset({"5xx", "gateway-error", "reset"})
_GATEWAY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's retry policy, resolved (Envoy's ``RetryPolicy`` as Istio builds it)."""

    attempts: int                      # retries, not tries (at most 1 + attempts requests)
    per_try_timeout: float | None      # None: the route timeout bounds each try
    retry_on: frozenset[str]           # tokens
    status_codes: frozenset[int]       # from bare numbers in retryOn (retriable-status-codes)
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = 10 * DEFAULT_BACKOFF_BASE  # Envoy: 10x base
    ignore_previous_hosts: bool = True
    retry_remote_localities: bool = False

    @property
    def enabled(self) -> bool:
        return self.attempts > 0


DISABLED = RetryPolicy(attempts=0, per_try_timeout=None, retry_on=frozenset(),
                       status_codes=frozenset(), ignore_previous_hosts=False)


def parse_retry_on(text: str) -> tuple[frozenset[str], frozenset[int]]:
    """Istio's ``parseRetryOn``: bare HTTP status numbers become retriable status codes
    (and add the ``retriable-status-codes`` token), everything else is a token."""
    tokens: set[str] = set()
    codes: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.isdigit() and 100 <= int(part) <= 599:
            codes.add(int(part))
        else:
            tokens.add(part)
    if codes:
        tokens.add("retriable-status-codes")
    return frozenset(tokens), frozenset(codes)


def retry_policy(retries: HTTPRetry | None, mesh: MeshConfig, *,
                 consistent_hash: bool = False) -> RetryPolicy:
    """The retry policy of a route (pilot's ``retry.ConvertPolicy``).

    * no ``retries`` on the route: the mesh's ``defaultHttpRetryPolicy`` if set
      (converted the same way: its omitted ``attempts`` is 0, which turns retries off
      mesh-wide; its ``perTryTimeout`` is ignored), else Istio's default of 2 retries
      on ``connect-failure,refused-stream,unavailable,cancelled``;
    * ``attempts`` 0 (or omitted) disables retries;
    * an empty ``retryOn`` keeps the default tokens; a non-empty one replaces them;
    * ``backoff`` sets the base interval (the cap stays 10x the base);
    * ``retryIgnorePreviousHosts`` defaults to true, except when the destination uses
      consistent hashing (``consistent_hash``): Istio then leaves the previous-hosts
      predicate off so a retry stays on the key's host.
    """
    spec: HTTPRetry | MeshHttpRetry | None = retries
    per_try: float | None = None
    if spec is None:
        spec = mesh.default_http_retry_policy
        if spec is None:
            return RetryPolicy(attempts=ISTIO_DEFAULT_ATTEMPTS, per_try_timeout=None,
                               retry_on=ISTIO_DEFAULT_RETRY_ON, status_codes=frozenset(),
                               ignore_previous_hosts=not consistent_hash)
    else:
        per_try = spec.per_try_timeout
    attempts = spec.attempts or 0
    if attempts <= 0:
        return DISABLED
    tokens, codes = ISTIO_DEFAULT_RETRY_ON, frozenset[int]()
    if spec.retry_on:
        tokens, codes = parse_retry_on(spec.retry_on)
    ignore_previous = not consistent_hash
    if spec.retry_ignore_previous_hosts is not None:
        ignore_previous = spec.retry_ignore_previous_hosts
    base = spec.backoff if spec.backoff else DEFAULT_BACKOFF_BASE
    return RetryPolicy(
        attempts=attempts, per_try_timeout=per_try, retry_on=tokens, status_codes=codes,
        backoff_base=base, backoff_max=10 * base, ignore_previous_hosts=ignore_previous,
        retry_remote_localities=bool(spec.retry_remote_localities),
    )


def should_retry(policy: RetryPolicy, outcome: Outcome, *, grpc: bool,
                 request_replayable: bool = True,
                 request_started: bool | None = None) -> bool:
    """Whether ``outcome`` is retriable under ``policy`` (retries left are not checked).

    ``request_started`` says whether any byte of the request reached the wire (for
    ``reset-before-request``); ``None`` infers it: not for a connect failure, yes for
    every other failure.
    """
    tokens = policy.retry_on
    if not tokens or policy.attempts <= 0:
        return False
    failure = outcome.failure
    if failure is not None:
        if failure is Failure.OVERFLOW:
            return False
        started = failure is not Failure.CONNECT_FAILURE if request_started is None \
            else request_started
        if not request_replayable and started:
            return False
        if failure is Failure.CONNECT_FAILURE and "connect-failure" in tokens:
            return True
        if not started and "reset-before-request" in tokens:
            return True
        if not tokens.isdisjoint(_ANSWERLESS_ANY):
            return True
        return failure is Failure.REFUSED_STREAM and "refused-stream" in tokens
    status = outcome.status
    if status is None or not request_replayable:
        return False
    if status >= 500:
        if status <= 599 and "5xx" in tokens:
            return True
        if status in _GATEWAY_STATUSES and "gateway-error" in tokens:
            return True
    if status == 409 and "retriable-4xx" in tokens:
        return True
    if status in policy.status_codes and "retriable-status-codes" in tokens:
        return True
    if grpc and outcome.grpc_status is not None:
        code = outcome.grpc_status
        for token, value in _GRPC_TOKENS.items():
            if value == code and token in tokens:
                return True
    return False


def backoff_delay(policy: RetryPolicy, retry_number: int, rng: random.Random) -> float:
    """Seconds to wait before retry ``retry_number`` (1 for the first retry).

    Envoy's ``JitteredExponentialBackOffStrategy``: uniform in
    ``[0, min(base * 2**(n-1), max))``, i.e. [0, 25ms), [0, 50ms), [0, 100ms),
    [0, 200ms), then [0, 250ms) with the defaults. (Envoy's router docs still print
    ``(2**n - 1) * base``, the formula of its older strategy; the code is what runs.)
    """
    n = max(retry_number, 1)
    ceiling = policy.backoff_max
    if n <= 64:
        ceiling = min(policy.backoff_base * (1 << (n - 1)), policy.backoff_max)
    return rng.random() * ceiling


_POLICY_MEMO: dict[tuple[int, int, bool], tuple[object, object, RetryPolicy]] = {}
_POLICY_MEMO_LIMIT = 4096


def cached_retry_policy(retries: HTTPRetry | None, mesh: MeshConfig, *,
                        consistent_hash: bool = False) -> RetryPolicy:
    """:func:`retry_policy`, memoised on the (immutable) config objects.

    It runs on every call; parsing ``retryOn`` again each time was a measurable part
    of the per-call cost. Entries hold the objects they were built from, so an id is
    never confused with a later object's.
    """
    key = (id(retries), id(mesh), consistent_hash)
    hit = _POLICY_MEMO.get(key)
    if hit is not None and hit[0] is retries and hit[1] is mesh:
        return hit[2]
    policy = retry_policy(retries, mesh, consistent_hash=consistent_hash)
    if len(_POLICY_MEMO) >= _POLICY_MEMO_LIMIT:
        _POLICY_MEMO.clear()
    _POLICY_MEMO[key] = (retries, mesh, policy)
    return policy

