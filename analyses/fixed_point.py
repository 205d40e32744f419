"""Exact sums of site contributions: 128-bit fixed-point integers with 64 fractional bits.

Every value x a site contributes is encoded as round(x · 2⁶⁴), an integer modulo 2¹²⁸ held
in two 64-bit limbs (two's complement for negative values). Sums of such integers are exact
and independent of order; secure aggregation adds random masks in the same ring, and they
cancel exactly. Decoding divides by 2⁶⁴ once.

Range and resolution: a site's values must be finite with |x| < 2⁵³ (≈ 9.0e15); the
resolution is 2⁻⁶⁴ (≈ 5.4e-20). Every float64 with |x| ≥ 2⁻¹¹ is encoded exactly (its last
bit is coarser than 2⁻⁶⁴); smaller magnitudes are rounded by at most 2⁻⁶⁵. Sums of up to
1,024 sites cannot overflow (2⁵³ · 2¹⁰ = 2⁶³).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

FRACTION_BITS = 64
LIMIT = 2.0**53
"""Largest magnitude (exclusive) a site may contribute."""
MAX_SITES = 1024

_ONE = np.uint64(1)
_LOW32 = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


class OutOfRange(ValueError):
    """A value cannot be encoded (not finite, or too large)."""


def is_count(values: np.ndarray) -> bool:
    """Integer (or boolean) values: counts, summed as integers, masked as 64-bit words."""
    return np.asarray(values).dtype.kind in "iub"


def encode(values: np.ndarray) -> np.ndarray:
    """round(values · 2⁶⁴) (half to even) as limbs, shape values.shape + (2,) of uint64 (low, high)."""
    if is_count(values):  # counts: the value itself is the high limb (two's complement)
        whole = check_integers(values)
        return np.stack([np.zeros(whole.shape, dtype=np.uint64), whole.astype(np.uint64)], axis=-1)
    x = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(x)):
        raise OutOfRange("a value is not finite (NaN or infinite)")
    if np.any(np.abs(x) >= LIMIT):
        raise OutOfRange(f"a value of magnitude {np.max(np.abs(x)):.3g} is beyond the exact range ±2^53")
    magnitude = np.abs(x)
    whole = np.floor(magnitude)
    scaled = np.rint((magnitude - whole) * 2.0**FRACTION_BITS)  # the exact fraction × 2⁶⁴, rounded once
    over = scaled >= 2.0**FRACTION_BITS  # rounded up to a whole unit
    limbs = np.stack([np.where(over, 0.0, scaled).astype(np.uint64), (whole + over).astype(np.uint64)], axis=-1)
    return np.where((x < 0)[..., None], negate(limbs), limbs)


def check_integers(values: np.ndarray) -> np.ndarray:
    """Integer values as int64, within the exact range ±2⁵³ (sums of up to 1,024 sites stay below 2⁶³)."""
    whole = np.asarray(values).astype(np.int64)
    if np.any(np.abs(whole) >= LIMIT):
        raise OutOfRange(f"a value of magnitude {np.max(np.abs(whole)):.3g} is beyond the exact range ±2^53")
    return whole


def negate(limbs: np.ndarray) -> np.ndarray:
    """−a modulo 2¹²⁸."""
    low = ~limbs[..., 0] + _ONE
    high = ~limbs[..., 1] + (low == 0).astype(np.uint64)
    return np.stack([low, high], axis=-1)


def total(parts: Iterable[np.ndarray]) -> np.ndarray:
    """The sum of limb arrays modulo 2¹²⁸ (exact, so order does not matter), in a few vectorized steps."""
    stack = np.stack(list(parts)) if not isinstance(parts, np.ndarray) else parts
    if len(stack) == 0:
        raise ValueError("nothing to add")
    if len(stack) >= 2**32:
        raise ValueError("too many parts to add at once")
    low, high = stack[..., 0], stack[..., 1]
    halves = (low & _LOW32).sum(axis=0, dtype=np.uint64)  # each sum < 2³² · 2³²: no overflow
    upper = (low >> _32).sum(axis=0, dtype=np.uint64) + (halves >> _32)
    carry = upper >> _32
    return np.stack([(halves & _LOW32) | (upper << _32), high.sum(axis=0, dtype=np.uint64) + carry], axis=-1)


def decode(limbs: np.ndarray, integer: bool = False) -> np.ndarray:
    """The signed value of limbs / 2⁶⁴, as float64 (or exact int64 for sums of integers)."""
    negative = (limbs[..., 1] >> np.uint64(63)) == 1
    magnitude = np.where(negative[..., None], negate(limbs), limbs)
    if integer:
        whole = magnitude[..., 1].astype(np.int64)
        return np.where(negative, -whole, whole)
    value = magnitude[..., 1].astype(float) + magnitude[..., 0].astype(float) * 2.0**-FRACTION_BITS
    return np.where(negative, -value, value)
