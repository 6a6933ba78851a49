"""The 30-day daily spend chart as a small inline SVG (no script, prints, scales to width)."""

from __future__ import annotations

from datetime import date, timedelta
from html import escape

from fastagi.core.money import format_amount

CHART_DAYS = 30
_W, _H, _PAD = 600, 160, 24


def days_ending(today: date) -> list[date]:
    return [today - timedelta(days=CHART_DAYS - 1 - i) for i in range(CHART_DAYS)]


def spend_svg(per_day: dict[str, int], today: date, title: str) -> str:
    days = days_ending(today)
    values = [per_day.get(d.isoformat(), 0) for d in days]
    top = max(values) or 1
    bar_w = (_W - 2 * _PAD) / CHART_DAYS
    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<text x="{_PAD}" y="14" class="axis">max {format_amount(max(values))}</text>',
    ]
    for i, (d, v) in enumerate(zip(days, values)):
        h = (_H - 2 * _PAD) * v / top
        x, y = _PAD + i * bar_w, _H - _PAD - h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}">'
            f"<title>{d.isoformat()}: {format_amount(v)}</title></rect>"
        )
        if i % 7 == 0 or i == CHART_DAYS - 1:
            parts.append(f'<text x="{x:.1f}" y="{_H - 6}" class="axis">{d.strftime("%m-%d")}</text>')
    parts.append("</svg>")
    return "".join(parts)
