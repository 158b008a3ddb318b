"""What the fleet page says about a device that is away, and what it shows of the last hour.

A device's figures (backlog, send rate) are those of its last report: while it is offline they
grow stale, so the page marks them with the age of that report. Its backlog growth is estimated
only where that is honest: when the last report showed the device caught up (its oldest unsent
record young), the rate it sent at is the rate it makes records at, and the backlog grows by
that rate since. A device that was already behind sent faster or slower than it made records,
and no estimate is given.

The sparkline is the last hour of the device's status history (one point per history step):
the age of its oldest unsent record, with the spans it was offline shaded, so that an outage
and the catching up after it stay visible on the fleet page once the device is back.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from markupsafe import Markup

from cloud_sync.server.console.format import DASH

CAUGHT_UP_S = 10.0
"""An oldest unsent record younger than this means the device was keeping up."""
HOUR = 3600.0
MIN_SPAN = 60.0
WIDTH, HEIGHT = 120, 24


def is_stale(device: dict[str, Any]) -> bool:
    return device.get("state") in ("offline", "silent") and device.get("last_seen") is not None


def backlog_estimate(device: dict[str, Any], now: float) -> int | None:
    """The backlog now, from the last report and the rate the device was making records at;
    None where that rate is not known."""
    if not is_stale(device):
        return None
    rate, backlog, age = device.get("send_rate"), device.get("backlog"), device.get("oldest_unsent_age_s")
    if not rate or backlog is None or (age is not None and age > CAUGHT_UP_S):
        return None
    return round(float(backlog) + float(rate) * max(0.0, now - float(device["last_seen"])))


def sparkline(points: list[dict[str, Any]], now: float) -> Markup:
    """An inline SVG of the last hour: lag (oldest unsent age) as a line, offline spans shaded."""
    recent = [p for p in points if p.get("at") is not None and p["at"] >= now - HOUR]
    if len(recent) < 2:
        return Markup(f'<span class="spark-none">{DASH}</span>')
    lags = [float(p.get("oldest_unsent_age_s") or 0.0) for p in recent]
    top = max(max(lags), 1.0)
    # the hour, or what history there is of it (a device seen for ten minutes fills the width)
    start = float(recent[0]["at"])
    span = max(now - start, MIN_SPAN)

    def x(at: float) -> float:
        return round((at - start) / span * WIDTH, 1)

    def y(lag: float) -> float:
        return round(HEIGHT - 1 - lag / top * (HEIGHT - 2), 1)

    shades = []
    for before, after in pairwise(recent):
        if not before.get("online"):
            left, right = x(before["at"]), x(after["at"])
            shades.append(f'<rect x="{left}" y="0" width="{max(right - left, 1)}" height="{HEIGHT}" '
                          'class="spark-off"/>')
    line = " ".join(f"{x(p['at'])},{y(lag)}" for p, lag in zip(recent, lags, strict=True))
    worst = max(lags)
    since = "last hour" if span >= HOUR - 60 else f"last {span / 60:.0f} min"
    label = f"{since}: worst lag {worst:.0f} s" + (", offline for a while" if shades else "")
    return Markup(
        f'<svg class="spark" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{label}"><title>{label}</title>{"".join(shades)}'
        f'<polyline points="{line}" class="spark-lag"/></svg>'
    )
