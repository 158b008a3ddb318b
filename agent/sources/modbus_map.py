"""A Modbus device's register map: its config, how registers group into requests, and how
words become numbers. No pymodbus here: this is plain data and arithmetic, tested alone."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.units import Name, PositiveDuration

RegisterKind = Literal["holding", "input", "coil", "discrete"]
ValueType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64", "bool"]
Order = Literal["ABCD", "DCBA", "BADC", "CDAB"]

WORDS = {"int16": 1, "uint16": 1, "bool": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}
_FORMAT = {
    "int16": "h", "uint16": "H", "bool": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d",
}
MAX_WORDS = 125  # per read request (Modbus application protocol, function 3 and 4)
MAX_BITS = 2000  # per read request (functions 1 and 2)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class RegisterConfig(_Model):
    """One value of a device: where it is, what it is, and how to scale it."""

    name: Name
    address: Annotated[int, Field(ge=0, le=65535)]
    """Zero-based address (register 40001 is ``address = 0``, ``kind = "holding"``)."""
    kind: RegisterKind = "holding"
    type: ValueType | None = None
    """Default: ``uint16`` for registers, ``bool`` for coils and discrete inputs."""
    order: Order = "ABCD"
    """Byte order of a value over its words: ``ABCD`` big-endian (the Modbus default), ``CDAB``
    word-swapped, ``BADC`` byte-swapped, ``DCBA`` little-endian."""
    scale: float = 1.0
    offset: float = 0.0
    """The reading is ``raw * scale + offset``."""
    unit: str | None = None

    @model_validator(mode="after")
    def _type_fits_kind(self) -> RegisterConfig:
        if self.kind in ("coil", "discrete") and self.type not in (None, "bool"):
            raise ValueError(f"a {self.kind} is one bit: type must be bool")
        return self

    @property
    def value_type(self) -> ValueType:
        if self.type is not None:
            return self.type
        return "bool" if self.kind in ("coil", "discrete") else "uint16"

    @property
    def width(self) -> int:
        """Registers (or bits) the value spans."""
        return 1 if self.kind in ("coil", "discrete") else WORDS[self.value_type]


class DeviceConfig(_Model):
    """One device (unit id) on the connection, with its own poll interval."""

    name: Name
    unit: Annotated[int, Field(ge=0, le=255)] = 1
    interval: PositiveDuration = 1.0
    registers: Annotated[list[RegisterConfig], Field(min_length=1)]

    @model_validator(mode="after")
    def _names_unique(self) -> DeviceConfig:
        names = [register.name for register in self.registers]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"register names used twice: {', '.join(repeated)}")
        return self


@dataclass(frozen=True)
class Block:
    """One read request: ``count`` registers (or bits) of ``kind`` from ``address``, and the
    values inside it (each with its offset in the block)."""

    kind: RegisterKind
    address: int
    count: int
    values: tuple[tuple[int, RegisterConfig], ...]
    layout: struct.Struct | None = field(default=None, compare=False)
    """Every value of the block in one unpacking, when they can be (big-endian numbers that
    do not overlap): a poll's cost is then one call, not one a register."""
    scaling: tuple[tuple[float, float], ...] = field(default=(), compare=False)


def plan_blocks(registers: list[RegisterConfig], max_gap: int = 0) -> list[Block]:
    """Group registers into as few requests as possible: values of one kind whose addresses
    are contiguous (or at most ``max_gap`` apart) share a request, up to the protocol's limit."""
    blocks: list[Block] = []
    for kind in ("holding", "input", "coil", "discrete"):
        limit = MAX_BITS if kind in ("coil", "discrete") else MAX_WORDS
        ours = sorted((r for r in registers if r.kind == kind), key=lambda r: r.address)
        start, end = -1, -1
        members: list[RegisterConfig] = []
        for register in ours:
            stop = register.address + register.width
            if members and register.address <= end + max_gap and stop - start <= limit:
                end = max(end, stop)
                members.append(register)
                continue
            if members:
                blocks.append(_block(kind, start, end, members))
            start, end, members = register.address, stop, [register]
        if members:
            blocks.append(_block(kind, start, end, members))
    return blocks


def _block(kind: RegisterKind, start: int, end: int, members: list[RegisterConfig]) -> Block:
    values = tuple((r.address - start, r) for r in members)
    scaling = tuple((r.scale, r.offset) for r in members)
    return Block(kind, start, end - start, values, _layout(kind, values), scaling)


def _layout(kind: RegisterKind, values: tuple[tuple[int, RegisterConfig], ...]) -> struct.Struct | None:
    if kind in ("coil", "discrete"):
        return None
    layout, at = [">"], 0
    for offset, register in values:
        if offset < at or register.order != "ABCD" or register.value_type == "bool":
            return None  # decoded one by one
        layout.append("x" * 2 * (offset - at) + _FORMAT[register.value_type])
        at = offset + register.width
    return struct.Struct("".join(layout))


def block_values(block: Block, words: list[int]) -> list[float]:
    """The scaled values of ``block``'s registers (in ``block.values`` order) from its words."""
    if block.layout is None:
        return [decode(words[offset : offset + register.width], register)
                for offset, register in block.values]
    raw = block.layout.unpack_from(struct.pack(f">{len(words)}H", *words))
    return [value * scale + offset for value, (scale, offset) in zip(raw, block.scaling, strict=True)]


def decode(words: list[int], register: RegisterConfig) -> float:
    """The scaled value of ``register`` from its words (or its bit)."""
    value_type = register.value_type
    if register.kind in ("coil", "discrete"):
        raw: float = float(words[0])
    elif value_type == "bool":
        raw = 1.0 if words[0] else 0.0
    else:
        data = b"".join(word.to_bytes(2, "big") for word in words)
        raw = struct.unpack(">" + _FORMAT[value_type], reorder(data, register.order))[0]
    return raw * register.scale + register.offset


def reorder(data: bytes, order: Order) -> bytes:
    """Bytes as they came (words in register order, each big-endian) put into big-endian order:
    ``CDAB`` swaps the words, ``BADC`` the bytes within each word, ``DCBA`` both."""
    if order in ("BADC", "DCBA"):
        data = b"".join(data[i + 1 : i + 2] + data[i : i + 1] for i in range(0, len(data), 2))
    if order in ("CDAB", "DCBA"):
        data = b"".join(data[i : i + 2] for i in range(len(data) - 2, -1, -2))
    return data
