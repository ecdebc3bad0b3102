"""Sequential integer square root: digit-by-digit (restoring), a few root bits per cycle.

The arithmetic is the one :func:`sw.intops.isqrt` defines: ``floor(sqrt(v))`` of an
unsigned integer, one root bit per step, each step bringing down two radicand bits into a
partial remainder and subtracting the trial value ``4 * root + 1`` when it fits.
"""
from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.timing import UnitTiming

__all__ = ["IntegerSqrt", "integer_sqrt_timing"]


def _check_parameters(width, steps_per_cycle) -> tuple[int, int]:
    for name, value in (("width", width), ("steps_per_cycle", steps_per_cycle)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 1 <= width <= 128:
        raise ValueError(f"width must be in 1..128, got {width}")
    root_width = (width + 1) // 2
    if not 1 <= steps_per_cycle <= root_width:
        raise ValueError(f"steps_per_cycle must be in 1..{root_width} (the root's width), "
                         f"got {steps_per_cycle}")
    return root_width, -(-root_width // steps_per_cycle)


def integer_sqrt_timing(width: int, steps_per_cycle: int) -> UnitTiming:
    """Timing of one square root on :class:`IntegerSqrt` ``(width, steps_per_cycle)``.

    ``N = ceil(ceil(width / 2) / steps_per_cycle)`` compute cycles; latency and interval are
    both ``N + 1`` (the result is taken in the cycle it appears).
    """
    _, cycles = _check_parameters(width, steps_per_cycle)
    return UnitTiming(latency=cycles + 1, interval=cycles + 1)


class IntegerSqrt(wiring.Component):
    """``floor(sqrt(v))`` of an unsigned ``width``-bit radicand, bit-exact to ``sw.intops.isqrt``.

    The radicand is zero-extended at the top to ``2 * steps_per_cycle * N`` bits and shifted
    out two bits per step, most significant first; ``steps_per_cycle`` steps are chained
    combinationally in each of the ``N`` compute cycles.

    Parameters
    ----------
    width : int
        Radicand width, 1..128.  The root has ``ceil(width / 2)`` bits.
    steps_per_cycle : int
        Root bits computed per cycle, 1..``ceil(width / 2)``.

    Members
    -------
    i : ``In(stream.Signature(unsigned(width)))``
        Radicands.  Accepted while no root is being computed and no result is waiting (or the
        waiting result is taken in the same cycle).
    o : ``Out(stream.Signature(unsigned(ceil(width / 2))))``
        Roots, one per radicand, held until taken.

    Notes
    -----
    LATENCY: a radicand accepted in cycle ``t`` gives ``o.valid`` in cycle ``t + N + 1``,
    ``N = ceil(ceil(width / 2) / steps_per_cycle)``.
    THROUGHPUT: one root every ``N + 1`` cycles while ``o.ready`` is high.
    Both are :func:`integer_sqrt_timing`.
    """

    def __init__(self, width: int, steps_per_cycle: int = 1):
        self._root_width, self._cycles = _check_parameters(width, steps_per_cycle)
        self._width = width
        self._steps_per_cycle = steps_per_cycle
        super().__init__({
            "i": In(stream.Signature(unsigned(width))),
            "o": Out(stream.Signature(unsigned(self._root_width))),
        })

    @property
    def width(self) -> int:
        """Radicand width."""
        return self._width

    @property
    def root_width(self) -> int:
        """Root width, ``ceil(width / 2)``."""
        return self._root_width

    @property
    def steps_per_cycle(self) -> int:
        """Root bits computed per cycle."""
        return self._steps_per_cycle

    @property
    def cycles(self) -> int:
        """Compute cycles per root (``N``)."""
        return self._cycles

    def elaborate(self, platform):
        m = Module()
        digits = self._cycles * self._steps_per_cycle     # root bits including leading padding
        radicand = Signal(2 * digits)                     # shifts left two bits per step
        # Invariant of the digit-by-digit root: remainder <= 2 * root < 2**(digits + 1).
        remainder = Signal(digits + 1)
        root = Signal(digits)
        cycles_left = Signal(range(self._cycles + 1))

        next_radicand, next_remainder, next_root = radicand, remainder, root
        for _ in range(self._steps_per_cycle):
            brought_down = Cat(next_radicand[-2:], next_remainder)     # 4 * rem + two bits
            trial = Cat(Const(1, 2), next_root)                        # 4 * root + 1
            fits = brought_down >= trial
            next_remainder = Mux(fits, brought_down - trial, brought_down)[:digits + 1]
            next_root = Cat(fits, next_root)[:digits]
            next_radicand = Cat(Const(0, 2), next_radicand)[:2 * digits]

        busy = cycles_left != 0
        m.d.comb += [
            self.i.ready.eq(~busy & (~self.o.valid | self.o.ready)),
            self.o.payload.eq(root),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                radicand.eq(self.i.payload),
                remainder.eq(0),
                root.eq(0),
                cycles_left.eq(self._cycles),
            ]
        with m.Elif(busy):
            m.d.sync += [
                radicand.eq(next_radicand),
                remainder.eq(next_remainder),
                root.eq(next_root),
                cycles_left.eq(cycles_left - 1),
            ]
            with m.If(cycles_left == 1):
                m.d.sync += self.o.valid.eq(1)
        return m
