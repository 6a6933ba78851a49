"""The benchmark's report: the figures and their targets, as a table and as JSON."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
from typing import Any

from fastagi.runtime.config import Settings
from fastagi.store.factory import is_pg

DISCREPANCIES_SHOWN_MAX = 10  # in the table; the JSON has them all

# figure: (target, how a value meets it) - docs/rules.md rule 21. Ratios measured in one run:
# these machines differ 2-3x from one another, so absolute rates (setups_per_s) are figures,
# not targets; p99 at 100 setups in progress is bound by Little's law (see the table's note).
TARGETS: dict[str, tuple[float, str]] = {
    "rss_peak_mb": (150, "<="),
    "ratio_vs_process_per_call": (100, ">="),
    "ratio_vs_raw": (0.5, ">="),
    "paced_setup_p99_ms": (10, "<="),
    "serve_cpu_share": (0.5, "<="),  # with --asterisk: serve's CPU per FastAGI request / Asterisk's
}
# with --asterisk (asterisk_ref.py)
ASTERISK_KEYS = (
    "serve_cpu_share",
    "asterisk_agi_per_s",
    "asterisk_cpu_ms_per_agi",
    "asterisk_serve_cpu_ms_per_agi",
    "asterisk_setups_per_s_max",
)
# the renewal run (renewals.py): beside serve's CPU per setup of the burst window
RENEW_KEYS = (
    "renewals_per_s",
    "serve_cpu_ms_per_renewal",
    "serve_cpu_ms_per_setup",
    "renewal_cpu_vs_setup",
)
EXTRA_KEYS = (
    "billed_as_simulated",
    "steady_setups_per_s",
    "steady_setup_p99_ms",
    "paced_rate_per_s",
    "paced_setup_p50_ms",
    "paced_setup_p99_ms",
    "paced_setup_max_ms",
)
REQUIRED_KEYS = (
    "setups_per_s",
    "setup_p50_ms",
    "setup_p99_ms",
    "setup_max_ms",
    "calls_per_s",
    "rss_peak_mb",
    "process_per_call_setups_per_s",
    "raw_tx_per_s",
    "ratio_vs_process_per_call",
    "ratio_vs_raw",
    "ledger_consistent",
    "settled_exactly_once",
)


def build_doc(a: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Every figure of a run (the parts cli._run measured) and the settings it ran with."""
    server, check, ppc, raw, asterisk = p["server"], p["check"], p["ppc"], p["raw"], p["asterisk"]
    burst, steady = server["burst"], server["steady"]
    doc: dict[str, Any] = {
        # Setups: the burst window, `concurrency` setups at once and nothing else asked of serve.
        "setups_per_s": burst["setups_per_s"],
        "setup_p50_ms": burst["setup_p50_ms"],
        "setup_p99_ms": burst["setup_p99_ms"],
        "setup_max_ms": burst["setup_max_ms"],
        # Full calls: the steady window, setups and settlements together.
        "calls_per_s": steady["calls_per_s"],
        "rss_peak_mb": server["rss_peak_mb"],
        "process_per_call_setups_per_s": ppc["process_per_call_setups_per_s"],
        "raw_tx_per_s": raw["raw_tx_per_s"],
        "ratio_vs_process_per_call": _ratio(burst["setups_per_s"], ppc["process_per_call_setups_per_s"]),
        "ratio_vs_raw": _ratio(burst["setups_per_s"], raw["raw_tx_per_s"]),
        "ledger_consistent": check["ledger_consistent"],
        "settled_exactly_once": check["settled_exactly_once"],
        "billed_as_simulated": check["billed_as_simulated"],
        "steady_setups_per_s": steady["setups_per_s"],
        "steady_setup_p99_ms": steady["setup_p99_ms"],
        # Latency below saturation: setups arriving at a fixed rate (open loop) while calls
        # also end, at most `concurrency` in setup at once, timed from their scheduled arrival.
        "paced_rate_per_s": server["paced_rate_per_s"],
        "paced_setup_p50_ms": server["paced_setup_p50_ms"],
        "paced_setup_p99_ms": server["paced_setup_p99_ms"],
        "paced_setup_max_ms": server["paced_setup_max_ms"],
        **{k: v for k, v in asterisk.items() if k in ASTERISK_KEYS},
        **(
            {
                "serve_cpu_share": _ratio(
                    asterisk["asterisk_serve_cpu_ms_per_agi"], asterisk["asterisk_cpu_ms_per_agi"]
                )
            }
            if asterisk.get("asterisk_cpu_ms_per_agi")
            else {}
        ),
        **_renew_figures(p["renew"], burst),
        "settings": _settings(a, p),
        "details": {
            "errors": server["errors"],
            "counts": server["counts"],
            "burst": burst,
            "steady": steady,
            "paced_setups": server["paced_setups"],
            "paced_late": server["paced_late"],
            "in_flight_max": server["in_flight_max"],
            "in_flight_at_steady_start": server["in_flight_at_steady_start"],
            "rss_sampled_max_mb": server["rss_sampled_max_mb"],
            "ramp_s": server["ramp_s"],
            "drain_s": server["drain_s"],
            "seed_s": p["seed_s"],
            "ami_logins": server["ami_logins"],
            "serve_exit": server["serve_exit"],
            "serve_log": server["serve_log"],
            "talk_time_matches": check["talk_time_matches"],
            "revenue_matches_costs": check["revenue_matches_costs"],
            "ledger": check["ledger"],
            "discrepancies": check["discrepancies"],
            "process_per_call": ppc,
            "raw": raw,
            "asterisk": asterisk,
            "renew": p["renew"],
            "ratio_calls_vs_raw_full_calls": _ratio(steady["calls_per_s"], raw["raw_full_calls_per_s"]),
            "total_s": p["total_s"],
        },
    }
    return doc


def _renew_figures(renew: dict[str, Any], burst: dict[str, Any]) -> dict[str, Any]:
    """The renewal run's figures beside the burst window's CPU per setup (both serve's own)."""
    if not renew:
        return {}
    per_setup = burst.get("serve_cpu_ms_per")
    return {
        "renewals_per_s": renew["renewals_per_s"],
        "serve_cpu_ms_per_renewal": renew["serve_cpu_ms_per_renewal"],
        "serve_cpu_ms_per_setup": per_setup,
        "renewal_cpu_vs_setup": _ratio(renew["serve_cpu_ms_per_renewal"], per_setup) if per_setup else None,
    }


def _settings(a: Any, p: dict[str, Any]) -> dict[str, Any]:
    """What the run was asked for, serve's settings under the load, and the machine."""
    return {
        "seconds": a.seconds,
        "burst_seconds": a.burst_seconds,
        "concurrency": a.concurrency,
        "settle_concurrency": a.settle_concurrency,
        "in_flight": a.in_flight,
        "paced_seconds": a.paced_seconds,
        "paced_share": a.paced_share,
        "numbers": a.numbers,
        "extensions": a.extensions,
        "seed": a.seed,
        "ppc_seconds": a.ppc_seconds,
        "ppc_concurrency": a.ppc_concurrency,
        "ppc_calls_max": a.ppc_calls_max,
        "raw_seconds": a.raw_seconds,
        "seed_cached": p["seed_cached"],
        "serve_log_level": a.serve_log_level,
        "serve_sweep_interval_s": a.serve_sweep_interval_s,
        "serve_workers": a.serve_workers,
        "asterisk": a.asterisk,
        "asterisk_channels": a.asterisk_channels,
        "asterisk_requests": a.asterisk_requests,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(p["loadavg"], 2),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "db": "postgresql" if getattr(a, "db", None) and is_pg(a.db) else "sqlite",
    }


def write_json(path: str, doc: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")


def print_table(doc: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str]] = []
    for key in REQUIRED_KEYS + EXTRA_KEYS + RENEW_KEYS + ASTERISK_KEYS:
        if key not in doc or doc[key] is None:
            continue
        v = doc[key]
        text = ("yes" if v else "NO") if isinstance(v, bool) else f"{v:,.1f}" if v >= 10 else f"{v:.2f}"
        target, verdict = "", ""
        if key in TARGETS:
            limit, op = TARGETS[key]
            target = f"{op} {limit:g}"
            verdict = "ok" if (v >= limit if op == ">=" else v <= limit) else "MISSED"
        elif isinstance(v, bool):
            verdict = "ok" if v else "FAILED"
        rows.append((key, text, target, verdict))
    d = doc["details"]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>12}  {'target':>8}")
    for name, text, target, verdict in rows:
        print(f"{name:<{width}}  {text:>12}  {target:>8}  {verdict}")
    c, st, bu, sd = d["counts"], doc["settings"], d["burst"], d["steady"]
    print(
        f"\nserve ran with {st['serve_workers']} processes, log level {st['serve_log_level']}, "
        f"the sweeper every {st['serve_sweep_interval_s']} s"
        + (" (serve's defaults)" if _serve_defaults(st) else " (NOT serve's defaults)")
    )
    print(
        f"burst: {st['burst_seconds']:g} s of setups only, {st['concurrency']} at once: serve used "
        f"{_pct(bu['serve_cpu_share'])} of a core, {_ms(bu['serve_cpu_ms_per'])} CPU per setup "
        f"(load generator {_ms(bu['load_cpu_ms_per'])})"
    )
    print(
        f"steady: {st['seconds']:g} s of setups and settlements, about {st['in_flight']} calls in flight: "
        f"serve used {_pct(sd['serve_cpu_share'])} of a core, {_ms(sd['serve_cpu_ms_per'])} CPU per full call "
        f"(load generator {_ms(sd['load_cpu_ms_per'])})"
    )
    print(
        f"in all: {c.get('setups', 0)} setups, {c.get('granted', 0)} granted, {c.get('prompted', 0)} prompted, "
        f"{c.get('settled', 0)} settled, {c.get('errors', 0)} errors, {d['in_flight_max']} calls in flight "
        f"at most; settled by {d['ledger']['calls_by_settlement_path']}; total {d['total_s']:.1f} s"
    )
    if doc["setups_per_s"] > 0:
        # Little's law: with N setups always in progress, the mean setup takes N / throughput.
        print(
            f"note: with {st['concurrency']} setups always in progress a setup takes "
            f"{st['concurrency'] / doc['setups_per_s'] * 1000:.0f} ms on average at this throughput "
            f"(Little's law); p99 <= 20 ms at {st['concurrency']} in setup needs >= "
            f"{st['concurrency'] / 0.020:,.0f} setups/s. The paced rows are the latency below saturation."
        )
    if "asterisk_cpu_ms_per_agi" in doc:
        ast = d["asterisk"]
        print(
            f"real Asterisk: {ast['asterisk_requests']} FastAGI requests from {ast['asterisk_channels']} "
            f"channels at {doc['asterisk_agi_per_s']:,.0f}/s; Asterisk used "
            f"{_ms(doc['asterisk_cpu_ms_per_agi'])} CPU per request, serve "
            f"{_ms(doc['asterisk_serve_cpu_ms_per_agi'])}. With every core and nothing else to do, "
            f"Asterisk could send at most {doc['asterisk_setups_per_s_max']:,.0f} setups/s "
            f"(two requests each; no audio, no Dial, no new channel per request)"
        )
    if d["in_flight_at_steady_start"] < st["in_flight"]:
        print(
            f"note: only {d['in_flight_at_steady_start']} calls were in flight when the steady window began "
            f"(the ramp stopped after its time limit)"
        )
    events = d["serve_log"].get("lines_by_event", {})
    if events:
        print("serve logged: " + ", ".join(f"{k} x{v}" for k, v in sorted(events.items())))
    for e in d["errors"][:5]:
        print(f"  error: {e}")
    for line in d["discrepancies"][:DISCREPANCIES_SHOWN_MAX]:  # why a check above FAILED
        print(f"  discrepancy: {line}")


def _serve_defaults(st: dict[str, Any]) -> bool:
    d = Settings()
    return (
        st["serve_log_level"] == d.log_level
        and st["serve_sweep_interval_s"] == d.sweep_interval_s
        and st["serve_workers"] == d.workers
    )


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def _ms(v: float | None) -> str:
    return "?" if v is None else f"{v:.2f} ms"


def _pct(share: float | None) -> str:
    return "?" if share is None else f"{share * 100:.0f}%"
