"""The cloud web console: fleet and device pages, sign-in, live updates (``docs/console.md``).

The names load on first use, so that ``edge-cloud user ...`` and ``--help`` stay quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud_sync.server.console.app import Console, ConsoleSettings

__all__ = ["Console", "ConsoleSettings"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cloud_sync.server.console import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
