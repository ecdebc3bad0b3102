"""Sequential unsigned integer divider: restoring long division, a few quotient bits per cycle."""
from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.timing import UnitTiming

__all__ = ["IntegerDivider", "integer_divider_timing"]


def _check_parameters(dividend_width, divisor_width, steps_per_cycle) -> int:
    for name, value in (("dividend_width", dividend_width), ("divisor_width", divisor_width),
                        ("steps_per_cycle", steps_per_cycle)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 1 <= dividend_width <= 128:
        raise ValueError(f"dividend_width must be in 1..128, got {dividend_width}")
    if not 1 <= divisor_width <= 128:
        raise ValueError(f"divisor_width must be in 1..128, got {divisor_width}")
    if not 1 <= steps_per_cycle <= dividend_width:
        raise ValueError(f"steps_per_cycle must be in 1..{dividend_width} (the quotient's width), "
                         f"got {steps_per_cycle}")
    return -(-dividend_width // steps_per_cycle)


def integer_divider_timing(dividend_width: int, steps_per_cycle: int) -> UnitTiming:
    """Timing of one division on :class:`IntegerDivider`.

    ``N = ceil(dividend_width / steps_per_cycle)`` compute cycles; latency and interval are
    both ``N + 1`` (the quotient is taken in the cycle it appears), whatever the divisor width.
    """
    cycles = _check_parameters(dividend_width, 1, steps_per_cycle)
    return UnitTiming(latency=cycles + 1, interval=cycles + 1)


class IntegerDivider(wiring.Component):
    """``dividend // divisor`` of unsigned integers.

    Restoring long division: the dividend (zero-extended at the top to
    ``steps_per_cycle * N`` bits) is shifted into a partial remainder one bit per step, most
    significant first, and each step subtracts the divisor when it fits, giving one quotient
    bit; ``steps_per_cycle`` steps are chained combinationally in each of the ``N`` compute
    cycles.  A divisor of 0 gives the all-ones quotient ``2**dividend_width - 1``.

    Parameters
    ----------
    dividend_width : int
        Width of the dividend and of the quotient, 1..128.
    divisor_width : int
        Width of the divisor, 1..128.
    steps_per_cycle : int
        Quotient bits computed per cycle, 1..``dividend_width``.

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"dividend": unsigned(dividend_width), "divisor": unsigned(divisor_width)})))``
        Operands.  Accepted while no division is in flight and no quotient is waiting (or the
        waiting quotient is taken in the same cycle).
    o : ``Out(stream.Signature(unsigned(dividend_width)))``
        Quotients, one per accepted operand pair, held until taken.

    Notes
    -----
    LATENCY: operands accepted in cycle ``t`` give ``o.valid`` in cycle ``t + N + 1``,
    ``N = ceil(dividend_width / steps_per_cycle)``.
    THROUGHPUT: one quotient every ``N + 1`` cycles while ``o.ready`` is high.
    Both are :func:`integer_divider_timing`.
    """

    def __init__(self, dividend_width: int, divisor_width: int, steps_per_cycle: int = 1):
        self._cycles = _check_parameters(dividend_width, divisor_width, steps_per_cycle)
        self._dividend_width = dividend_width
        self._divisor_width = divisor_width
        self._steps_per_cycle = steps_per_cycle
        operands = data.StructLayout({
            "dividend": unsigned(dividend_width),
            "divisor": unsigned(divisor_width),
        })
        super().__init__({
            "i": In(stream.Signature(operands)),
            "o": Out(stream.Signature(unsigned(dividend_width))),
        })

    @property
    def dividend_width(self) -> int:
        """Width of the dividend and of the quotient."""
        return self._dividend_width

    @property
    def divisor_width(self) -> int:
        """Width of the divisor."""
        return self._divisor_width

    @property
    def steps_per_cycle(self) -> int:
        """Quotient bits computed per cycle."""
        return self._steps_per_cycle

    @property
    def cycles(self) -> int:
        """Compute cycles per division (``N``)."""
        return self._cycles

    def elaborate(self, platform):
        m = Module()
        digits = self._cycles * self._steps_per_cycle      # quotient bits including padding
        # Dividend bits leave at the top while quotient bits enter at the bottom.
        dividend_quotient = Signal(digits)
        remainder = Signal(self._divisor_width)            # always < divisor (or 0 divisor)
        divisor = Signal(self._divisor_width)
        cycles_left = Signal(range(self._cycles + 1))

        next_dq, next_remainder = dividend_quotient, remainder
        for _ in range(self._steps_per_cycle):
            brought_down = Cat(next_dq[-1], next_remainder)            # 2 * rem + next bit
            fits = brought_down >= divisor
            next_remainder = Mux(fits, brought_down - divisor, brought_down)[:self._divisor_width]
            next_dq = Cat(fits, next_dq[:-1])

        busy = cycles_left != 0
        m.d.comb += [
            self.i.ready.eq(~busy & (~self.o.valid | self.o.ready)),
            self.o.payload.eq(dividend_quotient[:self._dividend_width]),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                dividend_quotient.eq(self.i.payload.dividend),
                remainder.eq(0),
                divisor.eq(self.i.payload.divisor),
                cycles_left.eq(self._cycles),
            ]
        with m.Elif(busy):
            m.d.sync += [
                dividend_quotient.eq(next_dq),
                remainder.eq(next_remainder),
                cycles_left.eq(cycles_left - 1),
            ]
            with m.If(cycles_left == 1):
                m.d.sync += self.o.valid.eq(1)
        return m
