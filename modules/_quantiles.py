"""A streaming quantile sketch with bounded memory and a guaranteed error, for ``window``.

Up to ``exact_limit`` values it keeps them all and answers exactly (linear interpolation between
closest ranks, as ``numpy.percentile`` does). Past that it switches to log-spaced bins of the
distance from a reference value, the mapping of DDSketch (Masson et al., VLDB 2019) and of
OpenTelemetry's exponential histograms, with two changes for sensor data:

* the bins hold ``v - ref``, not ``v``, where ``ref`` is the median of the first values. A
  relative error on raw values is poor for readings far from zero (1013 hPa, 293 K); on the
  distance from the median it does not depend on the offset or the unit;
* when there are more than ``max_bins`` bins on a side, the ones closest to ``ref`` are folded
  into one, so memory stays bounded whatever the data.

The guarantee: for the value ``x`` at rank ``floor(q * (n - 1))`` the estimate ``e`` satisfies
``|e - x| <= accuracy * |x - ref|``, except for values folded near ``ref``, which are within
``max_dev * gamma**-max_bins`` of it (with the defaults, under 0.6 % of the largest distance).
Together: every quantile is within ``accuracy`` (1 % by default) of the window's range, and
usually far closer. Merging two sketches with the same ``ref`` is exact; ``window`` gives every
pane of a sensor the same ``ref`` so hopping windows merge without extra error.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence


class SketchShape:
    """The constants shared by every sketch of one module instance."""

    __slots__ = ("accuracy", "exact_limit", "gamma", "inv_log_gamma", "max_bins", "represent")

    def __init__(self, accuracy: float = 0.01, exact_limit: int = 256, max_bins: int = 256) -> None:
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


class QuantileSketch:
    """Quantiles of a stream of finite floats in bounded memory; see the module docstring."""

    __slots__ = ("_exact", "_neg", "_neg_floor", "_pos", "_pos_floor", "_zero", "n", "ref", "shape")

    def __init__(self, shape: SketchShape, ref: float | None = None) -> None:
        self.shape = shape
        self.n = 0
        self.ref = ref
        """The reference the bins measure from; set on the switch to bins when not given."""
        self._exact: array[float] | None = array("d")
        self._pos: dict[int, int] = {}
        self._neg: dict[int, int] = {}
        self._zero = 0
        self._pos_floor = -(2**62)
        self._neg_floor = -(2**62)

    @property
    def exact(self) -> bool:
        return self._exact is not None

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
            if index < self._pos_floor:
                index = self._pos_floor
            bins = self._pos
        elif value < ref:
            index = math.ceil(math.log(ref - value) * self.shape.inv_log_gamma)
            if index < self._neg_floor:
                index = self._neg_floor
            bins = self._neg
        else:
            self._zero += count
            return
        bins[index] = bins.get(index, 0) + count
        if len(bins) > self.shape.max_bins:
            self._fold(bins is self._pos)

    def _fold(self, positive: bool) -> None:
        """Fold the bins closest to ``ref`` into one, keeping three quarters of the budget."""
        bins = self._pos if positive else self._neg
        keys = sorted(bins)
        keep = self.shape.max_bins * 3 // 4
        floor = keys[len(keys) - keep]
        folded = sum(bins.pop(key) for key in keys[: len(keys) - keep])
        bins[floor] += folded
        if positive:
            self._pos_floor = floor
        else:
            self._neg_floor = floor

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
                    mine[index] = mine.get(index, 0) + count
            self._pos_floor = max(self._pos_floor, other._pos_floor)
            self._neg_floor = max(self._neg_floor, other._neg_floor)
            self._zero += other._zero
            for positive in (True, False):
                while len(self._pos if positive else self._neg) > self.shape.max_bins:
                    self._fold(positive)
            return
        assert other.ref is not None
        for value, count in other._values():  # a different reference: add at bin values
            self._add_binned(value, count)

    def _values(self) -> list[tuple[float, int]]:
        """(value, count) pairs in ascending order: the bins' values, or the exact values."""
        if self._exact is not None:
            return [(value, 1) for value in sorted(self._exact)]
        ref = self.ref
        assert ref is not None
        shape = self.shape
        pairs = [(ref - shape.value(i), self._neg[i]) for i in sorted(self._neg, reverse=True)]
        if self._zero:
            pairs.append((ref, self._zero))
        pairs += [(ref + shape.value(i), self._pos[i]) for i in sorted(self._pos)]
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
