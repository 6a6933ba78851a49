"""/metrics: Prometheus text for operators, on the console's listener.

Calls in progress and settlements come from the store (where they are kept, so they survive
a restart); calls in setup and AMI state from the running service; setups by outcome are
counted from call control's `call.decision` log events (a structlog processor), so the
call path needs no metrics code of its own; store latency is a timed read per scrape.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from fastagi.store import tx_web_metrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SETUP_OUTCOMES_MAX = 64  # distinct outcome labels kept; more go to "other"

_setups: Counter[str] = Counter()


def count_decisions(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: count each call setup's outcome; the event goes on unchanged."""
    if event.get("event") == "call.decision":
        outcome = str(event.get("reason") or event.get("action") or "unknown")
        if outcome not in _setups and len(_setups) >= SETUP_OUTCOMES_MAX:
            outcome = "other"
        _setups[outcome] += 1
    return event


class _Snapshot:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def collect(self) -> Any:
        v = self.values
        yield GaugeMetricFamily("extbill_calls_in_setup", "FastAGI requests being handled now", v["in_setup"])
        yield GaugeMetricFamily(
            "extbill_calls_in_progress", "granted calls not yet settled (reservations held)", v["in_progress"]
        )
        setups = CounterMetricFamily(
            "extbill_call_setups", "call setup decisions by outcome", labels=["outcome"]
        )
        for outcome, n in sorted(v["setups"].items()):
            setups.add_metric([outcome], n)
        yield setups
        settled = CounterMetricFamily(
            "extbill_settlements", "settled calls by final state and path", labels=["state", "settled_by"]
        )
        for state, by, n in v["settled"]:
            settled.add_metric([state, by], n)
        yield settled
        yield GaugeMetricFamily("extbill_ami_connected", "1 while the AMI consumer is logged in", v["ami"])
        yield GaugeMetricFamily(
            "extbill_settlement_lag_seconds",
            "mean time from a call's end to its settlement, latest settled calls",
            v["lag_s"],
        )
        yield GaugeMetricFamily(
            "extbill_oldest_open_call_seconds", "age of the oldest unsettled reservation", v["oldest_open_s"]
        )
        yield GaugeMetricFamily(
            "extbill_store_read_seconds", "time of one read through the store, this scrape", v["store_read_s"]
        )


async def render(store: Any, runtime: Callable[[], dict[str, Any]], now_ms: int) -> bytes:
    started = time.perf_counter()
    calls = await store.read(tx_web_metrics.call_metrics, now_ms)
    values = {
        **calls,
        "store_read_s": time.perf_counter() - started,
        "setups": dict(_setups),
        "in_setup": 0,
        "ami": 0,
        **runtime(),
    }
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(values))
    return generate_latest(registry)
