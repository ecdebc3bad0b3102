"""One processing element (PE) of the weight-stationary systolic array (:mod:`hw.systolic_array`).

A PE holds one element of the stationary operand twice: the *stationary* register it
computes with and a *shadow* register into which the next tile's element is written while
the current tile streams.  Each cycle it takes one streaming operand from its left
neighbour and one partial sum from the PE above, and registers

* ``act_out = act_in`` (to the PE on its right),
* ``product = value * w``, and one cycle later ``psum_out = psum_in + product`` (to the PE
  below),

where ``value * w`` is a 9 x 8-bit signed product (``value`` is the int8 operand
sign-extended or the uint8 operand zero-extended, as the array chooses per tile).  The
Log-Int-Softmax attention's shifts run on their own unit (:mod:`hw.lis_attention`), so the
PE is one multiplier and one adder.

The stationary element a streaming operand meets is the shadow one when the operand
carries ``swap`` (the first row of a tile), which also copies the shadow register into the
stationary one.  So the swap travels through the array with the first row of the new tile
and every PE changes tiles exactly between the last row of one tile and the first of the
next.
"""
from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out


__all__ = ["ProcessingElement", "shift_add_product", "STREAM_OPERAND", "PRODUCT_BITS", "psum_bits"]

#: One streaming operand as it travels along a PE row.
STREAM_OPERAND = data.StructLayout({
    "value": signed(9),     # int8 sign-extended or uint8 zero-extended
    "swap": 1,              # first row of a tile: switch to the shadow stationary element
})

#: Width of one PE's term: a 9 x 8-bit signed product (at most 255 x -128 in magnitude).
PRODUCT_BITS = 17


def shift_add_product(a, b):
    """``a * b`` for a signed ``a`` and a signed 8-bit ``b`` as a sum of shifted partial
    products (``a << i`` where bit ``i`` of ``b`` is set, the sign bit's subtracted), so
    that synthesis builds it from LUTs and carry chains rather than a DSP multiplier."""
    width = len(b)
    parts = [Mux(b[i], a.as_signed() << i, 0) for i in range(width - 1)]
    # A balanced adder tree keeps the logic depth at log2(width) adders.
    while len(parts) > 1:
        parts = [parts[k] + parts[k + 1] if k + 1 < len(parts) else parts[k]
                 for k in range(0, len(parts), 2)]
    return parts[0] - Mux(b[width - 1], a.as_signed() << (width - 1), 0)


def psum_bits(rows: int) -> int:
    """Width of an exact partial sum of ``rows`` terms: ``PRODUCT_BITS + ceil(log2 rows)``."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    return PRODUCT_BITS + (rows - 1).bit_length()


class ProcessingElement(wiring.Component):
    """One multiply-and-accumulate cell with a double-buffered stationary int8 element.

    Parameters
    ----------
    psum_width : int
        Width of the signed partial sums ``psum_in`` / ``psum_out`` (at least
        :data:`PRODUCT_BITS`; :func:`psum_bits` of the array's row count).
    lut_multiplier : bool
        Compute the product with :func:`shift_add_product` (logic only) instead of ``*``
        (which synthesis maps to a DSP block).  The result is the same.

    Members
    -------
    act_in : ``In(STREAM_OPERAND)``
        Streaming operand from the left.
    act_out : ``Out(STREAM_OPERAND)``
        ``act_in`` registered, to the right.
    psum_in : ``In(signed(psum_width))``
        Partial sum from the PE above (0 for the top row).
    psum_out : ``Out(signed(psum_width))``
        ``psum_in + product`` registered, to the PE below, ``product`` being the registered
        product of the previous cycle's operand.
    weight_write : ``In(1)``
        Write ``weight`` into the shadow register at the end of this cycle.  A write in the
        cycle of a ``swap`` does not affect that swap (the swap copies the old shadow value).
    weight : ``In(signed(8))``
        Stationary element of the next tile.

    Notes
    -----
    LATENCY: 1 cycle for ``act_out``; 2 cycles from an operand to the partial sum that
    holds its product (the product is registered, so a DSP block's product is not in the
    same cycle as the adder; every PE of the array shifts by the same cycle, so the
    partial sums from above line up).  THROUGHPUT: one streaming operand per cycle.  Every register has the ``sync`` domain's enable, so an enclosing
    ``EnableInserter`` stalls the PE as a whole.
    """

    def __init__(self, psum_width: int, lut_multiplier: bool = False):
        if isinstance(psum_width, bool) or not isinstance(psum_width, int) \
                or psum_width < PRODUCT_BITS:
            raise ValueError(f"psum_width must be an integer >= {PRODUCT_BITS}, got {psum_width!r}")
        self._psum_width = psum_width
        self.lut_multiplier = bool(lut_multiplier)
        super().__init__({
            "act_in": In(STREAM_OPERAND),
            "act_out": Out(STREAM_OPERAND),
            "psum_in": In(signed(psum_width)),
            "psum_out": Out(signed(psum_width)),
            "weight_write": In(1),
            "weight": In(signed(8)),
        })

    @property
    def psum_width(self) -> int:
        return self._psum_width

    def elaborate(self, platform):
        m = Module()

        shadow = Signal(signed(8))
        stationary = Signal(signed(8))
        current = Signal(signed(8))
        m.d.comb += current.eq(Mux(self.act_in.swap, shadow, stationary))
        m.d.sync += stationary.eq(current)
        with m.If(self.weight_write):
            m.d.sync += shadow.eq(self.weight)

        term = Signal(signed(PRODUCT_BITS))
        if self.lut_multiplier:
            m.d.comb += term.eq(shift_add_product(self.act_in.value, current))
        else:
            m.d.comb += term.eq(self.act_in.value * current)

        product = Signal(signed(PRODUCT_BITS))
        m.d.sync += [
            self.act_out.eq(self.act_in),
            product.eq(term),
            self.psum_out.eq(self.psum_in + product),
        ]
        return m
