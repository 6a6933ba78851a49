"""serve's money tasks: closing each month by itself, and delivering the outbox.

Both run in serve's first process only, as their own tasks: a call's setup never waits
for them.
"""

from __future__ import annotations

import asyncio

import structlog

from fastagi.runtime.clock import now_ms
from fastagi.runtime.config import Settings
from fastagi.service.outbox import Outbox, OutboxLimits
from fastagi.store import tx_money
from fastagi.store.base import Store

log = structlog.get_logger("extbill.money")

PERIOD_CHECK_S = 60.0  # how soon after a number's local midnight of the 1st its month closes


class MoneyTasks:
    def __init__(self, store: Store, settings: Settings, period_check_s: float = PERIOD_CHECK_S) -> None:
        self.store = store
        self.period_check_s = period_check_s
        self.outbox: Outbox | None = None
        if settings.webhook_url:
            limits = OutboxLimits(retry_first_s=settings.webhook_retry_s)
            self.outbox = Outbox(store, settings.webhook_url, settings.webhook_secret, limits)
        else:
            log.warning(
                "outbox.no_webhook_url",
                note="notifications stay in the outbox (extbill events list) until webhook_url is set",
            )
        self._closer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._closer = asyncio.create_task(self._close_loop(), name="period-closer")
        if self.outbox is not None:
            self.outbox.start()

    async def stop(self) -> None:
        if self._closer is not None:
            self._closer.cancel()
            await asyncio.gather(self._closer, return_exceptions=True)
        if self.outbox is not None:
            await self.outbox.stop()

    async def close_due(self) -> int:
        closed = await self.store.run(tx_money.close_due, now_ms())
        for c in closed:
            log.info(
                "period.closed",
                number=c["number"],
                month=c["month"],
                spent=c["spent"],
                charge=c["charge"],
                paid=c["paid"],
                owed=c["owed"],
            )
        return len(closed)

    async def _close_loop(self) -> None:
        while True:  # first at start: a month that ended while serve was down closes now
            try:
                await self.close_due()
            except Exception as exc:  # noqa: BLE001  (the next pass tries again)
                log.error("period.close_failed", error=repr(exc))
            await asyncio.sleep(self.period_check_s)
