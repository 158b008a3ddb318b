"""The one error of the wire protocol."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A message that does not follow the protocol; ``reason`` is a short stable label for
    counting (``bad_json``, ``bad_header``...), ``detail`` says what and where."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")
