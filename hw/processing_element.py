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
next.  The copy is made a cycle ahead, from ``swap_next`` (the ``swap`` the PE's operand
carries in the next cycle): the multiplier reads the stationary register itself, and the
swap flag, which one register of the array drives to every PE of an anti-diagonal, ends at
that register rather than at the multiplier's input.
"""
from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out


__all__ = ["ProcessingElement", "PackedPair", "shift_add_product", "pack_weights",
           "split_packed_product", "STREAM_OPERAND", "PRODUCT_BITS", "PACK_SHIFT",
           "PACKED_WEIGHT_BITS", "psum_bits"]

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


#: Bit position of the upper product in a packed pair (:class:`PackedPair`): the lower
#: product is the signed 18-bit field below it (a 9 x 8-bit product needs 17).
PACK_SHIFT = 18
#: Width of a packed weight ``(w_hi << 18) + w_lo``, signed: 27 bits, a DSP48E2's A port
#: (pre-adder) width; a DSP48E1's is 25, too narrow.
PACKED_WEIGHT_BITS = 27


def pack_weights(w_hi, w_lo):
    """``(w_hi << PACK_SHIFT) + w_lo`` for two signed 8-bit weights (27 bits signed)."""
    return (w_hi.as_signed() << PACK_SHIFT) + w_lo.as_signed()


def split_packed_product(p):
    """``(hi, lo)`` of ``p = a * ((w_hi << 18) + w_lo)``: ``lo = a * w_lo`` is bits 0..17
    read as signed, ``hi = a * w_hi`` the bits above plus bit 17 (the lower field's sign,
    which borrowed one from the upper field).  Exact whenever ``a * w_lo`` fits a signed
    18-bit field, i.e. for every 9-bit signed ``a`` and 8-bit signed ``w_lo``."""
    lo = p[:PACK_SHIFT].as_signed()
    hi = p[PACK_SHIFT:].as_signed() + p[PACK_SHIFT - 1]
    return hi, lo


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
    swap_next : ``In(1)``
        ``act_in.swap`` of the next cycle (the input of the register that drives it).
    swap_ahead : ``Out(1)``
        ``act_out.swap`` of the next cycle: the next PE's ``swap_next``.
    weight_write : ``In(1)``
        Write ``weight`` into the shadow register at the end of this cycle.  A swap takes
        the shadow value of the cycle before it: a write in that cycle or in the swap's
        own does not affect it (the array writes a tile's shadow elements at least two
        cycles before its swap reaches them).
    weight : ``In(signed(8))``
        Stationary element of the next tile.

    Notes
    -----
    LATENCY: 1 cycle for ``act_out``; 2 cycles from an operand to the partial sum that
    holds its product (the product is registered, so a DSP block's product is not in the
    same cycle as the adder; every PE of the array shifts by the same cycle, so the
    partial sums from above line up).  THROUGHPUT: one streaming operand per cycle.  Every
    register has the ``sync`` domain's enable, so an enclosing ``EnableInserter`` stalls the
    PE as a whole.  Only the ``swap`` flag takes the ``sync`` reset; the weights, operand
    value, product and partial sum are reset-less (the array's valid flags say which
    results count).
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
            "swap_next": In(1),
            "swap_ahead": Out(1),
            "weight_write": In(1),
            "weight": In(signed(8)),
        })

    @property
    def psum_width(self) -> int:
        return self._psum_width

    def elaborate(self, platform):
        m = Module()

        # Data registers are reset-less (a tile's first row overwrites them on its way
        # through); the swap flag that travels with the operands takes the reset.
        # ``stationary`` is the element this cycle's operand meets: the shadow one is
        # copied in at the end of the cycle before the operand that carries the swap.
        shadow = Signal(signed(8), reset_less=True)
        stationary = Signal(signed(8), reset_less=True)
        with m.If(self.swap_next):
            m.d.sync += stationary.eq(shadow)
        with m.If(self.weight_write):
            m.d.sync += shadow.eq(self.weight)

        term = Signal(signed(PRODUCT_BITS))
        if self.lut_multiplier:
            m.d.comb += term.eq(shift_add_product(self.act_in.value, stationary))
        else:
            m.d.comb += term.eq(self.act_in.value * stationary)

        product = Signal(signed(PRODUCT_BITS), reset_less=True)
        act_value = Signal(signed(9), reset_less=True)
        act_swap = Signal()
        psum = Signal(signed(self._psum_width), reset_less=True)
        m.d.sync += [
            act_value.eq(self.act_in.value),
            act_swap.eq(self.act_in.swap),
            product.eq(term),
            psum.eq(self.psum_in + product),
        ]
        m.d.comb += [
            self.act_out.value.eq(act_value),
            self.act_out.swap.eq(act_swap),
            self.swap_ahead.eq(self.act_in.swap),
            self.psum_out.eq(psum),
        ]
        return m


class PackedPair(wiring.Component):
    """Two horizontally neighbouring processing elements, columns ``j`` and ``j + 1`` of a
    PE row, on one multiplier: ``value * ((w_{j+1} << 18) + w_j)``, a 9 x 27-bit product
    that fits one DSP48E2 (``config.dsp_pack = 2``).

    In the unpacked row PE ``j + 1`` multiplies the same streaming operand one cycle after
    PE ``j``.  The pair multiplies once, in PE ``j``'s cycle: column ``j`` takes the lower
    product field at once, column ``j + 1`` takes the upper field one cycle later (one more
    register), which is the term PE ``j + 1`` would have produced.  Column ``j + 1``'s
    double-buffered weight runs one cycle early to match: its swap is the operand's swap
    as it enters the pair (the swap PE ``j + 1`` would see one cycle later) and its shadow
    writes come one cycle before PE ``j + 1``'s (the array gives its weights one skew
    register fewer), i.e. in the same cycle as column ``j``'s.  So both columns' shadow
    and stationary weights live in one packed 27-bit register each.

    Members
    -------
    act_in, act_out :
        As :class:`ProcessingElement`'s; ``act_out`` is ``act_in`` delayed 2 cycles (the
        two PEs' registers).
    psum_in_0, psum_in_1 : ``In(signed(psum_width))``
        Partial sums from above for columns ``j`` and ``j + 1``.
    psum_out_0, psum_out_1 : ``Out(signed(psum_width))``
        The two columns' partial sums, each in the cycle the unpacked PE gives it.
    swap_next, swap_ahead :
        As :class:`ProcessingElement`'s (``swap_ahead`` is ``act_out.swap`` of the next
        cycle).
    weight_write : ``In(1)``
        Write ``weight_0`` and ``weight_1`` into the packed shadow register (column
        ``j``'s write cycle; column ``j + 1``'s write one cycle early).
    weight_0, weight_1 : ``In(signed(8))``
        Next tile's elements of columns ``j`` and ``j + 1``.

    Notes
    -----
    LATENCY and THROUGHPUT are those of two :class:`ProcessingElement` in a row: column
    ``j``'s sum 2 cycles after the operand enters, column ``j + 1``'s 3 cycles after (2
    after the unpacked PE ``j + 1`` would receive it), ``act_out`` 2 cycles; one operand
    per cycle.  Bit-exact and cycle-exact with the unpacked pair, stalls included (every
    register has the ``sync`` domain's enable).
    """

    def __init__(self, psum_width: int):
        if isinstance(psum_width, bool) or not isinstance(psum_width, int) \
                or psum_width < PRODUCT_BITS:
            raise ValueError(f"psum_width must be an integer >= {PRODUCT_BITS}, got {psum_width!r}")
        self._psum_width = psum_width
        super().__init__({
            "act_in": In(STREAM_OPERAND),
            "act_out": Out(STREAM_OPERAND),
            "psum_in_0": In(signed(psum_width)),
            "psum_in_1": In(signed(psum_width)),
            "psum_out_0": Out(signed(psum_width)),
            "psum_out_1": Out(signed(psum_width)),
            "swap_next": In(1),
            "swap_ahead": Out(1),
            "weight_write": In(1),
            "weight_0": In(signed(8)),
            "weight_1": In(signed(8)),
        })

    @property
    def psum_width(self) -> int:
        return self._psum_width

    def elaborate(self, platform):
        m = Module()

        # Reset-less data registers, reset swap flags, as in ProcessingElement.
        shadow = Signal(signed(PACKED_WEIGHT_BITS), reset_less=True)
        stationary = Signal(signed(PACKED_WEIGHT_BITS), reset_less=True)
        with m.If(self.swap_next):
            m.d.sync += stationary.eq(shadow)
        with m.If(self.weight_write):
            m.d.sync += shadow.eq(pack_weights(self.weight_1, self.weight_0))

        packed = Signal(signed(PACKED_WEIGHT_BITS + 9), reset_less=True)
        values = [Signal(signed(9), name=f"act_value_{k}", reset_less=True) for k in range(2)]
        swaps = [Signal(name=f"act_swap_{k}") for k in range(2)]
        m.d.sync += [
            packed.eq(self.act_in.value * stationary),
            values[0].eq(self.act_in.value),
            swaps[0].eq(self.act_in.swap),
            values[1].eq(values[0]),
            swaps[1].eq(swaps[0]),
        ]
        m.d.comb += [self.act_out.value.eq(values[1]), self.act_out.swap.eq(swaps[1]),
                     self.swap_ahead.eq(swaps[0])]
        hi, lo = split_packed_product(packed)
        lo_term = Signal(signed(PRODUCT_BITS))
        hi_term = Signal(signed(PRODUCT_BITS), reset_less=True)
        psums = [Signal(signed(self._psum_width), name=f"psum_{k}", reset_less=True)
                 for k in range(2)]
        m.d.comb += lo_term.eq(lo)
        m.d.sync += [
            hi_term.eq(hi),
            psums[0].eq(self.psum_in_0 + lo_term),
            psums[1].eq(self.psum_in_1 + hi_term),
        ]
        m.d.comb += [self.psum_out_0.eq(psums[0]), self.psum_out_1.eq(psums[1])]
        return m
