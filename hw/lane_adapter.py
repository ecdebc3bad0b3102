"""A lane adapter: an ``L``-lane unit behind an ``N``-lane stream (``L`` divides ``N``).

The vector engine's datapath is ``N`` lanes wide; :attr:`hw.config.AcceleratorConfig.norm_lanes`
builds the LayerNorm and the softmax ``L = N / k`` lanes wide to save their multipliers.
This adapter sits on both sides of such a unit:

* **in**: an ``N``-lane beat on ``i`` is passed to the unit as up to ``k`` parts of ``L``
  lanes, lanes ``jL .. jL + L - 1`` in part ``j``.  Part 0 goes through in the cycle the beat
  is taken (no register on the way); the beat is kept and parts ``1 .. k - 1`` follow in
  the next cycles while ``i.ready`` is low (``held``);
* **out**: the unit's ``L``-lane output parts are gathered, ``k`` to a beat, into ``o``.  The
  beat is offered in the cycle its last part comes out of the unit (parts ``0 .. k - 2``
  wait in registers).

A row of ``length`` elements is ``P = ceil(length / L)`` parts, ``ceil(length / N)`` beats: the
last beat of a row has ``P - k (ceil(length / N) - 1)`` parts, and only those reach the
unit; the lanes of the missing parts in the last output beat carry ``pad`` (the unit's
own padding value, so the beat is what an ``N``-lane unit would give).  Both sides count
parts within the row, so rows follow each other without a gap and ``length`` may change
between instructions: it must stay constant while a row is in the adapter, and be set at
least one cycle before a row's first part (the adapter registers the row's last part
index, so that the compares that end a row read two registers and no arithmetic on
``length``, which the vector engine drives from its instruction register).

Latency and throughput
----------------------
No cycle is added on either side: the unit's first part enters in the cycle its beat is
taken, and a row's last output beat is offered in the cycle of its last part.  The unit
takes one part a cycle, so a beat takes ``k`` cycles (fewer at the end of a row): an
``L``-lane unit's timing for a row of ``length`` elements is the row's timing through the
adapter (:func:`hw.core.vector_engine.vector_timing` uses it so).
"""
from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

__all__ = ["LaneAdapter"]


class LaneAdapter(wiring.Component):
    """An ``L``-lane unit behind an ``N``-lane stream (module docstring).

    Parameters
    ----------
    lanes : int
        ``N``: lanes of ``i`` and ``o``, a power of two.
    unit_lanes : int
        ``L``: lanes of the unit, a power of two below ``N``.
    in_bits, out_bits : int
        Bits per lane into and out of the unit.
    max_length : int
        The longest row, in elements.

    Members
    -------
    i : ``In(stream.Signature(unsigned(in_bits * N)))``
        Beats of ``N`` lanes, lane ``l`` at bits ``[l in_bits, (l + 1) in_bits)``.
    unit_i : ``Out(stream.Signature(unsigned(in_bits * L)))``
        Parts of ``L`` lanes into the unit.
    unit_o : ``In(stream.Signature(unsigned(out_bits * L)))``
        Parts of ``L`` lanes out of the unit, in row order.
    o : ``Out(stream.Signature(unsigned(out_bits * N)))``
        Beats of ``N`` lanes out.  ``unit_o`` waits for ``o.ready`` only with a beat's last part.
    length : ``In(range(max_length + 1))``
        Elements per row, ``1 .. max_length``; set at least one cycle before a row's
        first part is offered.
    pad : ``In(out_bits)``
        The value of every output lane beyond the row's last part.
    held : ``Out(1)``
        A beat is held and its later parts go to the unit: ``i.ready`` is low.  ``i.ready``
        is ``~held & unit_i.ready``, so a source may use ``~held`` with a ready of the
        unit's own that it knows to equal ``unit_i.ready`` when a part is offered.
    """

    def __init__(self, lanes: int, unit_lanes: int, in_bits: int, out_bits: int, max_length: int):
        for name, v in (("lanes", lanes), ("unit_lanes", unit_lanes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v!r}")
        if unit_lanes >= lanes:
            raise ValueError(f"unit_lanes ({unit_lanes}) must be less than lanes ({lanes})")
        for name, v in (("in_bits", in_bits), ("out_bits", out_bits), ("max_length", max_length)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self._n, self._l = lanes, unit_lanes
        self._in_bits, self._out_bits = in_bits, out_bits
        self._max_length = max_length
        super().__init__({
            "i": In(stream.Signature(unsigned(in_bits * lanes))),
            "unit_i": Out(stream.Signature(unsigned(in_bits * unit_lanes))),
            "unit_o": In(stream.Signature(unsigned(out_bits * unit_lanes))),
            "o": Out(stream.Signature(unsigned(out_bits * lanes))),
            "length": In(range(max_length + 1)),
            "pad": In(out_bits),
            "held": Out(1),
        })

    @property
    def parts(self) -> int:
        """``k = N / L``: parts per beat."""
        return self._n // self._l

    def elaborate(self, platform):
        m = Module()
        k = self.parts
        part_bits = exact_log2(k)
        in_part, out_part = self._in_bits * self._l, self._out_bits * self._l
        # At least k parts wide, so that a position's low bits are its part of the beat:
        # every beat but a row's last has k parts, so beats start at multiples of k.
        max_parts = max(-(-self._max_length // self._l), k)

        # P - 1: the index of a row's last part, registered (``length`` is set a cycle
        # before a row's first part).
        last_part = Signal(range(max_parts + 1))
        m.d.sync += last_part.eq((self.length - 1) >> exact_log2(self._l))

        # ------------------------------------------------------------------ in
        in_pos = Signal(range(max_parts + 1))     # parts of the current row sent
        sub = in_pos[:part_bits]                  # the next part's place in its beat
        kept = Signal(in_part * (k - 1))          # the held beat's parts not sent, next lowest
        held = self.held
        m.d.comb += [
            self.unit_i.valid.eq(held | self.i.valid),
            self.unit_i.payload.eq(Mux(held, kept[:in_part], self.i.payload[:in_part])),
            self.i.ready.eq(~held & self.unit_i.ready),
        ]
        in_row_end = in_pos == last_part
        with m.If(self.unit_i.valid & self.unit_i.ready):
            m.d.sync += in_pos.eq(Mux(in_row_end, 0, in_pos + 1))
            with m.If(in_row_end | (sub == k - 1)):
                m.d.sync += held.eq(0)
            with m.Elif(held):
                m.d.sync += kept.eq(kept >> in_part)
            with m.Else():
                m.d.sync += [held.eq(1), kept.eq(self.i.payload[in_part:])]

        # ------------------------------------------------------------------ out
        out_pos = Signal(range(max_parts + 1))    # parts of the current row received
        osub = out_pos[:part_bits]                # the part's place in the beat gathered
        gathered = [Signal(out_part, name=f"gathered_{j}") for j in range(k - 1)]
        out_row_end = out_pos == last_part
        completes = Signal()
        m.d.comb += [
            completes.eq(out_row_end | (osub == k - 1)),
            self.o.valid.eq(self.unit_o.valid & completes),
            self.unit_o.ready.eq(~completes | self.o.ready),
        ]
        pad = Cat(self.pad for _ in range(self._l))
        groups = [Mux(osub == j, self.unit_o.payload, Mux(osub > j, gathered[j], pad))
                  for j in range(k - 1)]
        groups.append(Mux(osub == k - 1, self.unit_o.payload, pad))
        m.d.comb += self.o.payload.eq(Cat(*groups))
        with m.If(self.unit_o.valid & self.unit_o.ready):
            m.d.sync += out_pos.eq(Mux(out_row_end, 0, out_pos + 1))
            for j in range(k - 1):
                with m.If(osub == j):
                    m.d.sync += gathered[j].eq(self.unit_o.payload)
        return m
