"""/metrics in Prometheus text: open on a loopback bind, an operator's sign-in otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, place_call, serve, sign_in
from prometheus_client.parser import text_string_to_metric_families

from fastagi.web.app import is_loopback


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_metrics_count_calls_and_settlements(server: Server) -> None:
    """A call in progress and two settled ones show up; the text parses as Prometheus format."""
    place_call(server, "m-rated", "1", "13700000002", "2026-11-30T09:01:00.000Z", 20)
    place_call(server, "m-noans", "1", "13700000003", "2026-11-30T09:02:00.000Z", 0)
    # last: a grant reserves all the extension can pay
    place_call(server, "m-open", "1", "13700000001", "2026-11-30T09:00:00.000Z", None)
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = samples(r.text)
    assert m[("extbill_calls_in_progress", ())] == 1
    assert m[("extbill_settlements_total", (("settled_by", "hangup"), ("state", "rated")))] == 1
    assert m[("extbill_settlements_total", (("settled_by", "hangup"), ("state", "unanswered")))] == 1
    assert m[("extbill_ami_connected", ())] == 0
    assert m[("extbill_oldest_open_call_seconds", ())] > 0
    assert m[("extbill_store_read_seconds", ())] > 0


@pytest.fixture
def public(tmp_path: Path) -> Iterator[Server]:
    yield from serve(tmp_path, bind_host="0.0.0.0")


def test_metrics_need_an_operator_off_loopback(public: Server) -> None:
    assert httpx.get(f"{public.url}/metrics").status_code == 403
    assert sign_in(public, "hq").get("/metrics").status_code == 403
    assert sign_in(public, "op").get("/metrics").status_code == 200


@pytest.mark.parametrize(
    "host, loop",
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.0.0.5", False)],
)
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop
