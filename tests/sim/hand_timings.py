"""Simple stand-in unit timings whose cycle counts are easy to compute by hand (by timing
name of :data:`hw.units.TIMINGS`)."""
from hw.timing import UnitTiming


def _beats(c, n):
    return -(-n // c.vector_lanes)


#: latency / interval of one job on each unit, as simple formulas.
HAND_FORMULAS = {
    "systolic_array": lambda c, m: UnitTiming(m + 5, m + 1),
    "requantizer": lambda c, n: UnitTiming(_beats(c, n) + 3, _beats(c, n)),
    "gelu": lambda c, n: UnitTiming(_beats(c, n) + 1, _beats(c, n)),
    "gelu_table": lambda c: UnitTiming(256, 256),
    "softmax": lambda c, n, mode: UnitTiming(3 * _beats(c, n) + 8, _beats(c, n) + 3),
    "layernorm": lambda c, n: UnitTiming(2 * _beats(c, n) + 40, max(_beats(c, n), 19)),
    "residual_add": lambda c, n: UnitTiming(_beats(c, n) + 2, _beats(c, n)),
}
