"""Delivering the outbox: signed webhooks, retried with backoff, in order per number.

serve's first process runs one Outbox. Each pass reads the oldest pending event of every
number whose attempt is due, POSTs them (a few at once, never two of one number), and
marks each delivered or schedules its retry (core/webhook.py). Everything is in the
database, so a restart resumes where it stopped; an event whose POST succeeded just
before a crash may be sent again: receivers deduplicate on its event id.
Call setup never waits for any of it: the loop is its own task, and the events were
already committed with the changes that caused them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from fastagi.core.webhook import (
    EVENT_ID_HEADER,
    RETRY_MAX_GAP_S,
    RETRY_WINDOW_S,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
)
from fastagi.runtime.clock import now_ms
from fastagi.store import tx_outbox
from fastagi.store.base import Store

log = structlog.get_logger("extbill.outbox")


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    poll_s: float = 1.0  # how often the loop looks for due events (other processes write them too)
    request_timeout_s: float = 10.0  # one POST, connect to last byte
    in_flight_max: int = 8  # POSTs at once (each to a different number's stream)
    batch_max: int = 64  # due events read per pass
    retry_first_s: float = 10.0  # the first retry's delay; doubling up to retry_max_gap_s
    retry_max_gap_s: float = RETRY_MAX_GAP_S
    retry_window_s: float = RETRY_WINDOW_S  # then the event is marked failed


class Outbox:
    def __init__(self, store: Store, url: str, secret: str, limits: OutboxLimits = OutboxLimits()) -> None:
        self.store = store
        self.url = url
        self.secret = secret
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.in_flight_max)
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.limits.request_timeout_s, follow_redirects=False)
        self._task = asyncio.create_task(self._loop(), name="outbox")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                sent = await self.deliver_due()
            except Exception as exc:  # noqa: BLE001  (the loop must outlive one bad pass)
                log.error("outbox.pass_failed", error=repr(exc))
                sent = 0
            if not sent:  # something went out: its number's next event may be due right away
                await asyncio.sleep(self.limits.poll_s)

    async def deliver_due(self) -> int:
        """One pass: POST every due head event; return how many were delivered."""
        rows = await self.store.read(tx_outbox.due, now_ms(), self.limits.batch_max)
        results = await asyncio.gather(*(self._deliver(r) for r in rows))
        return sum(results)

    async def _deliver(self, row: dict[str, Any]) -> bool:
        async with self._slots:
            body = tx_outbox.body(row)
            ts = int(time.time())
            headers = {
                "Content-Type": "application/json",
                EVENT_ID_HEADER: row["event_id"],
                TIMESTAMP_HEADER: str(ts),
                SIGNATURE_HEADER: signature(self.secret, ts, body),
            }
            assert self._client is not None
            try:
                resp = await self._client.post(self.url, content=body, headers=headers)
                error = None if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if error is None:
            await self.store.run(tx_outbox.mark_delivered, row["id"])
            log.info("outbox.delivered", event_id=row["event_id"], type=row["type"], number=row["stream"])
            return True
        lim = self.limits
        state = await self.store.run(
            tx_outbox.mark_attempt_failed,
            row["id"],
            error,
            now_ms(),
            lim.retry_first_s,
            lim.retry_max_gap_s,
            lim.retry_window_s,
        )
        log.warning(
            "outbox.gave_up" if state == "failed" else "outbox.retry_later",
            event_id=row["event_id"],
            type=row["type"],
            number=row["stream"],
            attempts=row["attempts"] + 1,
            error=error,
        )
        return False
