"""Resilience decisions: balancing, outlier detection, limits, retries, budgets, faults.

Pure decision code in the style of the rest of meshsdk: no I/O, no sleeping, no
threads. Time is read through an injected ``clock`` (monotonic seconds) and chance
through an injected ``random.Random``, so every decision can be replayed in tests.
The stateful objects (balancers, :class:`OutlierDetector`, :class:`ConnectionLimits`,
retry budgets) are made once per cluster and shared by sync and async drivers; they
guard their state with a short, uncontended lock and never wait.

Each module says which Istio fields it reads, which Envoy behaviour it reproduces
and where it departs from it.
"""

from meshsdk.resilience.balancer import (
    Balancer,
    endpoint_key,
    hash_key,
    locality_preference,
    make_balancer,
)
from meshsdk.resilience.budget import (
    ConcurrencyRetryBudget,
    RatioRetryBudget,
    RetryBudget,
    make_retry_budget,
)
from meshsdk.resilience.fault import FaultDecision, decide_fault
from meshsdk.resilience.limits import ConnectionLimits
from meshsdk.resilience.outlier import OutlierDetector
from meshsdk.resilience.retry import (
    ISTIO_DEFAULT_RETRY_ON,
    RetryPolicy,
    backoff_delay,
    retry_policy,
    should_retry,
)

__all__ = [
    "ISTIO_DEFAULT_RETRY_ON",
    "Balancer",
    "ConcurrencyRetryBudget",
    "ConnectionLimits",
    "FaultDecision",
    "OutlierDetector",
    "RatioRetryBudget",
    "RetryBudget",
    "RetryPolicy",
    "backoff_delay",
    "decide_fault",
    "endpoint_key",
    "hash_key",
    "locality_preference",
    "make_balancer",
    "make_retry_budget",
    "retry_policy",
    "should_retry",
]
