"""An open-loop workload: requests that arrive at a set average rate for a set time, whatever
the responses do (a slow or failing proxy does not slow the arrivals down, as real users do
not wait for each other).

Arrivals are a Poisson process: the gaps between them are independent and exponentially
distributed with mean 1 / ``workload.rate``, so gaps far shorter and far longer than the
mean both occur; a share ``workload.post_share`` of the requests, picked at random, are POSTs.
The same ``workload.seed`` gives the same arrivals and methods, so two settings can be
compared on one workload. :func:`plan` is pure.

Not covered: bursts, diurnal shapes, closed-loop clients (a fixed number of users each
waiting for its response).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .knobs import integer, number, seconds

__all__ = ["WORKLOAD_KNOBS", "Arrival", "plan", "MAX_REQUESTS"]

#: the most requests one run may plan (the runner's trial limit)
MAX_REQUESTS = 100_000

WORKLOAD_KNOBS = (
    number("workload.rate", 50.0, "Requests per second, on average (Poisson arrivals)", low=0.1, high=2000.0,
           models="your traffic; an open-loop load generator (wrk2, vegeta)"),
    seconds("workload.duration", 20.0, "How long requests keep arriving", low=0.001, high=600.0),
    number("workload.post_share", 0.0, "Share of the requests that are POSTs (the rest are GETs)", low=0.0,
           high=1.0, models="non-idempotent requests (RFC 9110 section 9.2.2)"),
    integer("workload.seed", 1, "Seed of the arrival times and methods: the same seed, the same workload"),
)


@dataclass(frozen=True)
class Arrival:
    #: seconds after the workload starts
    at: float
    method: str


def plan(rate: float, duration: float, post_share: float = 0.0, seed: int = 1) -> list[Arrival]:
    """The requests of one run, in arrival order: Poisson arrivals at ``rate`` per second
    in [0, ``duration``), each a POST with probability ``post_share``.

    >>> [a.method for a in plan(100.0, 0.05, post_share=0.0)]
    ['GET', 'GET', 'GET', 'GET', 'GET']
    >>> len(plan(100.0, 60.0))  # about rate x duration: 6000
    5913
    """
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate {rate} and duration {duration} must be above 0")
    if not 0.0 <= post_share <= 1.0:
        raise ValueError(f"post_share {post_share}: must be between 0 and 1")
    rng = random.Random(seed)
    arrivals: list[Arrival] = []
    at = rng.expovariate(rate)
    while at < duration:
        if len(arrivals) >= MAX_REQUESTS:
            raise ValueError(f"workload: more than {MAX_REQUESTS} requests; lower workload.rate or "
                             f"workload.duration")
        arrivals.append(Arrival(at, "POST" if rng.random() < post_share else "GET"))
        at += rng.expovariate(rate)
    return arrivals
