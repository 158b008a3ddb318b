"""A page of the fleet: which devices, in which order, how many; parsed from a query string.

``FleetQuery`` is what the fleet page and ``GET /api/devices`` accept; ``where`` and ``order``
turn it into SQL over ``device_summary`` with ``?`` placeholders (the store adapts them). Every
name that reaches the SQL comes from the tables below, never from the request.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from cloud_sync.server.store.summary import BEHIND_AFTER, SILENT_AFTER

MAX_PAGE = 500

FILTERS = ("all", "problems", "offline", "silent", "behind", "errors", "online")
"""``problems`` is offline, silent, unknown or behind, or with errors, drops, gaps or
quarantined messages."""

# name -> SQL expression whose ascending order is "least first"; NULLs always last.
SORTS: dict[str, str] = {
    "device": "device_id",
    "state": "online",
    "last_seen": "last_seen",
    "backlog": "backlog",
    "backlog_bytes": "backlog_bytes",
    "lag": "-oldest_unsent_at",
    "last_sync": "last_sync",
    "send_rate": "send_rate",
    "dropped": "dropped_total",
    "quarantined": "quarantined",
    "errors": "errors_total",
    "version": "version",
}
DEFAULT_DESC = {"last_seen", "backlog", "backlog_bytes", "lag", "last_sync", "send_rate", "dropped",
                "quarantined", "errors"}
"""Sorts that read best biggest (or newest) first when a column head is clicked."""


D = TypeVar("D")


class QueryError(ValueError):
    """A fleet query parameter out of range; the message names it."""


@dataclass(frozen=True)
class FleetQuery:
    """Which devices (``show``, ``q``), in which order (``sort``, ``desc``), which page."""

    show: str = "all"
    q: str = ""
    sort: str = "problems"
    desc: bool = False
    limit: int | None = 50
    offset: int = 0
    now: float = 0.0
    silent_after: float = SILENT_AFTER
    behind_after: float = BEHIND_AFTER

    @classmethod
    def parse(
        cls, params: Mapping[str, str], *, default_sort: str = "problems", default_limit: int | None = 50,
        now: float | None = None,
    ) -> FleetQuery:
        """From ``?show=&q=&sort=&order=asc|desc&limit=&offset=``; ``QueryError`` when out of range."""
        show = params.get("show") or "all"
        sort = params.get("sort") or default_sort
        order = params.get("order") or ""
        if show not in FILTERS:
            raise QueryError(f"show: one of {', '.join(FILTERS)}")
        if sort != "problems" and sort not in SORTS:
            raise QueryError(f"sort: one of problems, {', '.join(SORTS)}")
        if order not in ("", "asc", "desc"):
            raise QueryError("order: asc or desc")
        return cls(
            show=show,
            q=(params.get("q") or "").strip()[:64],
            sort=sort,
            desc=order == "desc" if order else sort in DEFAULT_DESC,
            limit=int_param(params, "limit", default_limit, 1, MAX_PAGE if default_limit else None),
            offset=int_param(params, "offset", 0, 0, None) or 0,
            now=time.time() if now is None else now,
        )

    def page(self, offset: int) -> FleetQuery:
        return replace(self, offset=max(0, offset))

    def where(self) -> tuple[str, list[Any]]:
        silent_before = self.now - self.silent_after
        behind_before = self.now - self.behind_after
        clauses: list[str] = []
        params: list[Any] = []
        if self.q:
            clauses.append("lower(device_id) LIKE ? ESCAPE '!'")
            params.append("%" + _escape_like(self.q.lower()) + "%")
        if self.show == "offline":
            clauses.append("online = 0")
        elif self.show == "online":
            clauses.append("online = 1 AND last_seen >= ?")
            params.append(silent_before)
        elif self.show == "silent":
            clauses.append("online = 1 AND last_seen < ?")
            params.append(silent_before)
        elif self.show == "behind":
            clauses.append("backlog > 0 AND oldest_unsent_at < ?")
            params.append(behind_before)
        elif self.show == "errors":
            clauses.append("(errors_total > 0 OR last_error IS NOT NULL)")
        elif self.show == "problems":
            clauses.append(
                "(online IS NULL OR online = 0 OR last_seen < ? OR (backlog > 0 AND oldest_unsent_at < ?)"
                " OR errors_total > 0 OR dropped_total > 0 OR gaps > 0 OR lost > 0 OR quarantined > 0)"
            )
            params += [silent_before, behind_before]
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def order(self) -> tuple[str, list[Any]]:
        if self.sort == "problems":
            # offline, then silent, then never heard, then the rest; most behind first within each
            rank = ("CASE WHEN online = 0 THEN 0 WHEN online IS NULL THEN 2 WHEN last_seen < ? THEN 1 "
                    "ELSE 3 END")
            direction = "DESC" if self.desc else "ASC"
            return (
                f" ORDER BY {rank} {direction}, oldest_unsent_at IS NULL, oldest_unsent_at,"
                " backlog IS NULL, backlog DESC, device_id",
                [self.now - self.silent_after],
            )
        column = SORTS[self.sort]
        direction = "DESC" if self.desc else "ASC"
        tie = "" if self.sort == "device" else ", device_id"
        return f" ORDER BY {column} IS NULL, {column} {direction}{tie}", []

    def as_params(self, **changes: Any) -> dict[str, str]:
        """This query as URL parameters (for links), with ``changes``; defaults left out."""
        values = {"show": self.show, "q": self.q, "sort": self.sort, "order": "desc" if self.desc else "asc",
                  "offset": str(self.offset), "limit": str(self.limit)}
        values.update({k: str(v) for k, v in changes.items()})
        if values["order"] == ("desc" if values["sort"] in DEFAULT_DESC else "asc"):
            values.pop("order")
        defaults = {"show": "all", "q": "", "sort": "problems", "offset": "0", "limit": "50"}
        return {k: v for k, v in values.items() if defaults.get(k) != v}

    def sort_link(self, sort: str) -> dict[str, str]:
        """Parameters for a click on column ``sort``: its natural order first, then reversed."""
        if sort == self.sort:
            return self.as_params(order="asc" if self.desc else "desc", offset=0)
        return self.as_params(sort=sort, order="desc" if sort in DEFAULT_DESC else "asc", offset=0)


def _escape_like(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def int_param(params: Mapping[str, str], name: str, default: D, low: int, high: int | None = None) -> int | D:
    """Query parameter ``name`` as an integer in ``[low, high]``, ``default`` when absent;
    ``QueryError`` (a ``ValueError``) naming the parameter otherwise."""
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise QueryError(f"{name}: {value[:40]!r} is not an integer") from None
    high = INT_MAX if high is None else high  # a store's integers are 64-bit: beyond, SQL fails
    if not low <= number <= high:
        raise QueryError(f"{name}: must be between {low} and {high}")
    return number


INT_MAX = (1 << 63) - 1
