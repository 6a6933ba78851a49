"""The JSON documents the CLI prints and the API returns alike: `extbill balance N --json`
(tests/web compare the two)."""

from __future__ import annotations

from typing import Any

from fastagi.core.money import money_fields


def balance_document(doc: dict[str, Any]) -> dict[str, Any]:
    """tx_admin.balance's dict as `extbill balance N --json` prints it."""
    return money_fields(
        {
            "number": doc["number"],
            "status": doc["status"],
            "ivr": doc["ivr"],
            "ext_billing": doc["ext_billing"],
            "min_balance": doc["min_balance"],
            "main": {k: doc["main"][k] for k in ("balance", "reserved", "available")},
            "extensions": [
                {k: e[k] for k in ("key", "name", "balance", "reserved", "available", "status")}
                for e in doc["extensions"]
            ],
        }
    )
