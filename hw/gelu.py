"""GELU by table lookup: ``L`` int8 lanes per beat through a run-time loadable 256-entry table.

The golden model is :func:`sw.intops.gelu_lut`: ``y = table[x + 128]``.
"""
from __future__ import annotations

import math

from amaranth import Cat, Module, Signal, unsigned, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import AcceleratorConfig
from hw.timing import UnitTiming

__all__ = ["GeluLut", "gelu_timing", "gelu_table_load_timing", "GELU_PIPELINE_DEPTH",
           "GELU_TABLE_ENTRIES"]

#: Entries of the table: one per int8 input value.
GELU_TABLE_ENTRIES = 256
#: Register stages between an accepted input beat and its output beat: the input register,
#: then the table read.
GELU_PIPELINE_DEPTH = 2

#: Payload of one table write: ``table[addr] = data``, ``addr = x + 128``.
TABLE_WRITE_LAYOUT = data.StructLayout({"addr": unsigned(8), "data": signed(8)})


def _lanes(config: AcceleratorConfig) -> int:
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"an AcceleratorConfig is required, got {config!r}")
    return config.vector_lanes


class GeluLut(wiring.Component):
    """GELU (or any int8 -> int8 function) of ``L = config.vector_lanes`` lanes per beat.

    Each lane of an input beat indexes a 256-entry int8 table at ``x + 128``, exactly
    :func:`sw.intops.gelu_lut`.  Every lane needs its own read port in every cycle, so the
    table is stored ``L`` times (one copy per lane; a table write updates all copies):
    ``L`` blocks of 256 x 8 bits.  On ECP5 Yosys maps each copy to one DP16KD block RAM (of
    which it uses 2 kbit of 18) plus about 20 LUT4 of logic that keeps a read of the entry
    being written in the same cycle returning the old entry (see ``docs/HARDWARE.md``).  The
    table resets to all zeros and is loaded through ``table_write``.

    Parameters
    ----------
    config : :class:`hw.config.AcceleratorConfig`
        Uses ``vector_lanes`` (``L``).

    Members
    -------
    i : ``In(stream.Signature(unsigned(8 * L)))``
        Input beats: lane ``k`` (an int8, two's complement) in bits ``[8k, 8k + 8)``.
    o : ``Out(stream.Signature(unsigned(8 * L)))``
        Output beats: lane ``k`` is ``table[x_k + 128]`` in bits ``[8k, 8k + 8)``.
    table_write : ``In(stream.Signature(StructLayout({"addr": unsigned(8), "data": signed(8)})))``
        Table writes: ``table[addr] = data`` with ``addr = x + 128``, one per cycle; a write
        takes effect for input beats accepted in later cycles.  Ready while no beat is in
        flight (none in the input register or at the output), so no beat accepted before a
        write sees it; the vector engine loads the table in an instruction of its own, with
        the pipeline empty, where writes are always ready.

    Latency and throughput
    ----------------------
    One beat per cycle while ``o`` is not stalled; the output of the beat accepted in cycle
    ``t`` is valid in cycle ``t + 2`` (``GELU_PIPELINE_DEPTH = 2``: the input beat is
    registered before it addresses the tables, so no path runs from the block RAM that
    feeds ``i`` to the tables' address pins; on the placed ULX3S core that path was one of
    the slowest, 20.7 ns).  A job of ``n`` elements is ``B = ceil(n / L)`` beats: LATENCY
    ``B + 2`` cycles, THROUGHPUT ``L`` elements per cycle (interval ``B``).  Table writes
    are registered too, so they reach the tables a cycle late, as the beats do.  Loading
    the table takes 256 cycles.  See :func:`gelu_timing` and
    :func:`gelu_table_load_timing`.  A stalled output (``o.ready`` low while ``o.valid``)
    holds the whole pipeline, ``i.ready`` included.
    """

    def __init__(self, config: AcceleratorConfig):
        self._lanes = _lanes(config)
        super().__init__({
            "i": In(stream.Signature(unsigned(8 * self._lanes))),
            "o": Out(stream.Signature(unsigned(8 * self._lanes))),
            "table_write": In(stream.Signature(TABLE_WRITE_LAYOUT)),
        })

    @property
    def lanes(self) -> int:
        """Elements per beat (``L``)."""
        return self._lanes

    def elaborate(self, platform):
        m = Module()

        # The pipeline moves whenever its output register is empty or being emptied.
        advance = ~self.o.valid | self.o.ready
        x_valid = Signal()
        m.d.comb += [
            self.i.ready.eq(advance),
            self.table_write.ready.eq(~x_valid & ~self.o.valid),
        ]
        x_beat = Signal.like(self.i.payload)
        with m.If(advance):
            m.d.sync += [
                x_valid.eq(self.i.valid),
                x_beat.eq(self.i.payload),
                self.o.valid.eq(x_valid),
            ]
        table_write = Signal.like(self.table_write.payload)
        table_write_en = Signal()
        m.d.sync += [table_write.eq(self.table_write.payload),
                     table_write_en.eq(self.table_write.valid & self.table_write.ready)]

        for lane in range(self._lanes):
            table = Memory(shape=signed(8), depth=GELU_TABLE_ENTRIES, init=[])
            m.submodules[f"table_{lane}"] = table
            write = table.write_port()
            m.d.comb += [
                write.addr.eq(table_write.addr),
                write.data.eq(table_write.data),
                write.en.eq(table_write_en),
            ]
            x = x_beat.word_select(lane, 8)
            read = table.read_port()
            m.d.comb += [
                # x + 128 for a two's-complement int8 x: invert its sign bit.
                read.addr.eq(Cat(x[:7], ~x[7])),
                read.en.eq(advance),
                self.o.payload.word_select(lane, 8).eq(read.data),
            ]
        return m


def gelu_timing(config: AcceleratorConfig, n: int) -> UnitTiming:
    """Timing of a GELU job of ``n`` elements on :class:`GeluLut`.

    With ``B = ceil(n / L)`` beats: LATENCY ``B + 2`` cycles (first input handshake to last
    output handshake, both cycles counted), interval ``B`` cycles (THROUGHPUT ``L`` elements
    per cycle).
    """
    lanes = _lanes(config)
    if n < 1:
        raise ValueError(f"a GELU job needs at least one element, got {n}")
    beats = math.ceil(n / lanes)
    return UnitTiming(latency=beats + GELU_PIPELINE_DEPTH, interval=beats)


def gelu_table_load_timing(config: AcceleratorConfig) -> UnitTiming:
    """Timing of loading the whole table: 256 writes, one per cycle.

    LATENCY 256 cycles (input beats accepted from the next cycle on see the new table),
    interval 256 cycles.
    """
    _lanes(config)
    return UnitTiming(latency=GELU_TABLE_ENTRIES, interval=GELU_TABLE_ENTRIES)
