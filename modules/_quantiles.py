"""A streaming quantile sketch with bounded memory and a guaranteed error, for ``window``.

Up to ``exact_limit`` values it keeps them all and answers exactly (linear interpolation between
closest ranks, as ``numpy.percentile`` does). Past that it switches to log-spaced bins of the
distance from a reference value, the mapping of DDSketch (Masson et al., VLDB 2019) and of
OpenTelemetry's exponential histograms, with two changes for sensor data:

* the bins hold ``v - ref``, not ``v``, where ``ref`` is the median of the first values. A
  relative error on raw values is poor for readings far from zero (1013 hPa, 293 K); on the
  distance from the median it depends on neither the offset nor the unit;
* each side (above and below ``ref``) is a contiguous array of at most ``max_bins`` counts;
  past that, the bins closest to ``ref`` are folded into one, so memory stays bounded (4 bytes a
  bin) whatever the data.

The guarantee: for the value ``x`` at rank ``floor(q * (n - 1))`` the estimate ``e`` satisfies
``|e - x| <= accuracy * |x - ref|``, except for values folded near ``ref``, which are within
``max_dev * gamma**-max_bins`` of it: with the defaults (1 %, 1024 bins a side) that is a
billionth of the largest distance, so in practice never. Hence every quantile is within
``accuracy`` of the window's range, and far closer near the median. Merging two sketches with
the same ``ref`` adds their counts and loses nothing; ``window`` gives a sensor's panes the same
``ref`` so hopping windows merge exactly.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import Any


class SketchShape:
    """The constants shared by every sketch of one module instance."""

    __slots__ = ("accuracy", "exact_limit", "gamma", "inv_log_gamma", "max_bins", "represent")

    def __init__(
        self, accuracy: float = 0.01, exact_limit: int = 256, max_bins: int = 1024
    ) -> None:
        if not 0 < accuracy < 1:
            raise ValueError("accuracy must be between 0 and 1")
        self.accuracy = accuracy
        self.exact_limit = exact_limit
        self.max_bins = max_bins
        self.gamma = (1 + accuracy) / (1 - accuracy)
        self.inv_log_gamma = 1 / math.log(self.gamma)
        self.represent = 2 / (1 + self.gamma)  # bin i stands for 2 * gamma**i / (1 + gamma)

    def value(self, index: int) -> float:
        return self.represent * self.gamma ** index


class _Side:
    """Counts of bins ``lo``, ``lo + 1``... of one side, at most ``max_bins`` of them."""

    __slots__ = ("counts", "lo")

    def __init__(self) -> None:
        self.lo = 0
        self.counts: array[int] = array("I")

    def add(self, index: int, count: int, max_bins: int) -> None:
        counts = self.counts
        if not counts:
            self.lo = index
            counts.append(count)
            return
        lo = self.lo
        if index < lo:
            grow = min(lo - index, max_bins - len(counts))
            if grow > 0:  # room to reach lower: prepend empty bins
                self.counts = counts = array("I", bytes(4 * grow)) + counts
                self.lo = lo = lo - grow
            counts[max(index - lo, 0)] += count  # below the floor: folded into the lowest bin
            return
        offset = index - lo
        if offset >= len(counts):
            counts.extend(array("I", bytes(4 * (offset + 1 - len(counts)))))
            if len(counts) > max_bins:
                fold = len(counts) - max_bins  # the bins closest to ref go into one
                folded = sum(counts[: fold + 1])
                del counts[:fold]
                counts[0] = folded
                self.lo = lo = lo + fold
                offset = index - lo
        counts[offset] += count

    def items(self) -> list[tuple[int, int]]:
        return [(self.lo + i, c) for i, c in enumerate(self.counts) if c]

    def __len__(self) -> int:
        return len(self.counts)


class QuantileSketch:
    """Quantiles of a stream of finite floats in bounded memory; see the module docstring."""

    __slots__ = ("_exact", "_neg", "_pos", "_zero", "n", "ref", "shape")

    def __init__(self, shape: SketchShape, ref: float | None = None) -> None:
        self.shape = shape
        self.n = 0
        self.ref = ref
        """The reference the bins measure from; set on the switch to bins when not given."""
        self._exact: array[float] | None = array("d")
        self._pos = _Side()
        self._neg = _Side()
        self._zero = 0

    @property
    def exact(self) -> bool:
        return self._exact is not None

    def dump(self) -> list[Any]:
        """The sketch as JSON can hold it (a checkpoint saves it); ``load`` reads it back."""
        exact = None if self._exact is None else self._exact.tolist()
        sides = [[side.lo, side.counts.tolist()] for side in (self._pos, self._neg)]
        return [self.n, self.ref, exact, sides, self._zero]

    @classmethod
    def load(cls, shape: SketchShape, saved: list[Any]) -> QuantileSketch:
        n, ref, exact, sides, zero = saved
        sketch = cls(shape, ref)
        sketch.n, sketch._zero = n, zero
        sketch._exact = None if exact is None else array("d", exact)
        for side, (lo, counts) in zip((sketch._pos, sketch._neg), sides, strict=True):
            side.lo, side.counts = lo, array("I", counts)
        return sketch

    def add(self, value: float) -> None:
        self.n += 1
        exact = self._exact
        if exact is not None:
            exact.append(value)
            if len(exact) > self.shape.exact_limit:
                self._to_bins()
            return
        self._add_binned(value, 1)

    def _add_binned(self, value: float, count: int) -> None:
        ref = self.ref
        assert ref is not None
        if value > ref:
            index = math.ceil(math.log(value - ref) * self.shape.inv_log_gamma)
            self._pos.add(index, count, self.shape.max_bins)
        elif value < ref:
            index = math.ceil(math.log(ref - value) * self.shape.inv_log_gamma)
            self._neg.add(index, count, self.shape.max_bins)
        else:
            self._zero += count

    def _to_bins(self) -> None:
        exact = self._exact
        assert exact is not None
        self._exact = None
        if self.ref is None:
            ordered = sorted(exact)
            self.ref = ordered[len(ordered) // 2]
        for value in exact:
            self._add_binned(value, 1)

    def merge(self, other: QuantileSketch) -> None:
        """Add ``other``'s values to this sketch (``other`` is left as it was)."""
        self.n += other.n
        if other._exact is not None:
            if self._exact is not None:
                self._exact.extend(other._exact)
                if len(self._exact) > self.shape.exact_limit:
                    self._to_bins()
            else:
                for value in other._exact:
                    self._add_binned(value, 1)
            return
        if self._exact is not None:
            if self.ref is None:
                self.ref = other.ref
            self._to_bins()
        if other.ref == self.ref:
            for mine, theirs in ((self._pos, other._pos), (self._neg, other._neg)):
                for index, count in theirs.items():
                    mine.add(index, count, self.shape.max_bins)
            self._zero += other._zero
            return
        for value, count in other._values():  # another reference: add at the bins' values
            self._add_binned(value, count)

    def _values(self) -> list[tuple[float, int]]:
        """(value, count) pairs in ascending order: the bins' values, or the exact values."""
        if self._exact is not None:
            return [(value, 1) for value in sorted(self._exact)]
        ref = self.ref
        assert ref is not None
        shape = self.shape
        pairs = [(ref - shape.value(i), c) for i, c in reversed(self._neg.items())]
        if self._zero:
            pairs.append((ref, self._zero))
        pairs += [(ref + shape.value(i), c) for i, c in self._pos.items()]
        return pairs

    def quantiles(
        self, qs: Sequence[float], low: float = -math.inf, high: float = math.inf
    ) -> list[float]:
        """The values at quantiles ``qs`` (each in [0, 1]), clamped to ``[low, high]`` (pass
        the window's min and max: it only helps). Empty sketches give NaN."""
        if self.n == 0:
            return [math.nan for _ in qs]
        if self._exact is not None:
            ordered = sorted(self._exact)
            return [_interpolated(ordered, q) for q in qs]
        pairs = self._values()
        out = []
        for q in qs:
            rank = math.floor(q * (self.n - 1))
            seen = 0
            estimate = pairs[-1][0]
            for value, count in pairs:
                seen += count
                if seen > rank:
                    estimate = value
                    break
            out.append(min(max(estimate, low), high))
        return out

    def bins(self) -> int:
        """How many bins (or exact values) the sketch holds now."""
        if self._exact is not None:
            return len(self._exact)
        return len(self._pos) + len(self._neg) + (1 if self._zero else 0)


def _interpolated(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    fraction = position - below
    return ordered[below] + (ordered[above] - ordered[below]) * fraction
