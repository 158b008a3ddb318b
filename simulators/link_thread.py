"""A link proxy on a thread of its own, for synchronous tests and tools.

    with ThreadedLink(broker.port) as link:
        client.connect("127.0.0.1", link.port)
        link.set_mode("halfopen")
        ...
        link.set_mode("pass")
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from simulators.link import LinkProxy
from simulators.link_state import LinkMode, LinkState

T = TypeVar("T")


class ThreadedLink:
    """Runs a ``LinkProxy`` to ``target_host:target_port`` on a private event loop."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1",
                 listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.proxy = LinkProxy(listen, (target_host, target_port))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="link-proxy",
                                        daemon=True)

    @property
    def port(self) -> int:
        return self.proxy.port

    def start(self) -> ThreadedLink:
        self._thread.start()
        self._call(self.proxy.start())
        return self

    def set_mode(self, mode: LinkMode | LinkState | str, value: float | None = None) -> LinkState:
        """As ``LinkProxy.set_mode``; returns once the mode is in force."""
        return self._call(self._on_loop(lambda: self.proxy.set_mode(mode, value)))

    def status(self) -> dict[str, Any]:
        return self._call(self._on_loop(self.proxy.status))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self.proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> ThreadedLink:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    @staticmethod
    async def _on_loop(function: Callable[[], T]) -> T:
        return function()
