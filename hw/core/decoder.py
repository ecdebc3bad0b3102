"""The instruction decoder: every check of the ISA table on one instruction word, in RTL.

Generated from :mod:`compiler.isa`: the opcode set and field layouts (:data:`FORMATS`), the
legal values of enum fields, the queue of each opcode, every :class:`~compiler.isa.Rule`
and every memory :class:`~compiler.isa.Pattern` (with its regions) are read from the table
and evaluated on the word's fields, so the decoder cannot disagree with the compiler or the
cycle model.  The verdict is the one the cycle model's ``validate`` gives, with the same
priority:

1. ``ILLEGAL``: unknown opcode, a reserved bit set, an enum field out of range, a wait or
   signal on the instruction's own queue, masks on HALT, HALT anywhere but last, the last
   instruction not a HALT (that one is ``NO_HALT``);
2. the first failing rule's code (``CONSTRAINT`` for every rule of the table today);
3. the patterns in table order: ``RANGE`` if outside every region the operand may use (or
   beyond ``dram_size`` for DRAM), then ``CONSTRAINT`` for a written pattern whose rows
   overlap (``rows > 1`` and ``stride < width``).

Timing: the word is taken in the cycle ``start`` is high; the verdict (``error``, ``queue``)
is valid in the cycle ``valid`` is high, :data:`DECODE_LATENCY` cycles later.  One decode at
a time (``start`` again once ``valid`` was high, at the earliest in that same cycle).
Patterns are checked one per cycle through one shared multiplier (``(rows - 1) * stride``),
in three stages: select the pattern's operands from the word (registered), multiply
(registered), compare.
"""
from __future__ import annotations

from amaranth import Cat, Const, Module, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from compiler.isa import (FORMATS, HEADER_BITS, INSTR_BITS, NQ, QUEUE_OF, SPECS,
                          ErrorCode, Opcode, _patterns_of, _rules_of)
from hw.config import AcceleratorConfig
from hw.core.isa_layout import fields_of, header_layout

__all__ = ["Decoder", "DECODE_LATENCY", "MAX_PATTERNS", "ERROR_BITS"]

#: Most memory patterns of any opcode (checked one per cycle).
MAX_PATTERNS = max(len(_patterns_of(spec, AcceleratorConfig())) for spec in SPECS.values())
#: Cycles from ``start`` to ``valid``: the word is registered, then the rules and the first
#: pattern's operand select, one cycle per further pattern (select the next, multiply the
#: one before, compare the one before that), the last multiply, the last compare, and the
#: registered verdict.
DECODE_LATENCY = MAX_PATTERNS + 3
#: Width of an error code.
ERROR_BITS = max(int(c) for c in ErrorCode).bit_length()

#: Bits of the address arithmetic: 32-bit addresses, a 16-bit row count times a 32-bit
#: stride, a width of at most 2**16 * 64 elements.
_HI_BITS = 50


class _Fields:
    """``a[name]`` for the rules and patterns: the fields of one opcode's view of the word."""

    def __init__(self, view):
        self.view = view

    def __getitem__(self, name):
        return Value.cast(self.view[name])

    def get(self, name, default=None):
        try:
            return self[name]
        except (AttributeError, KeyError):
            return default


def _value(x, bits: int = _HI_BITS):
    """An Amaranth value of an expression that may have folded to a Python int."""
    if isinstance(x, bool):
        return Const(int(x), 1)
    if isinstance(x, int):
        return Const(x, unsigned(max(bits, x.bit_length())))
    return x


class Decoder(wiring.Component):
    """Checks one instruction word (see the module docstring).

    Ports: ``word`` and ``start`` (take the word), ``last`` (the word is the program's
    last instruction), ``dram_size`` (bytes of DRAM the program may address); ``valid``
    (one cycle, :data:`DECODE_LATENCY` after ``start``), ``error`` (an
    :class:`~compiler.isa.ErrorCode`, ``NONE`` for a legal instruction), ``queue`` (the
    instruction's queue, ``NQ`` for HALT), ``busy`` (a decode is under way), ``held`` (the
    word taken, from two cycles after its ``start``, in particular at ``valid``, until one
    cycle after the next ``start``).
    """

    def __init__(self, config: AcceleratorConfig):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, got {type(config).__name__}")
        self.config = config
        super().__init__({
            "word": In(INSTR_BITS),
            "start": In(1),
            "last": In(1),
            "dram_size": In(32),
            "valid": Out(1),
            "busy": Out(1),
            "error": Out(ERROR_BITS),
            "queue": Out(range(NQ + 1)),
            "held": Out(INSTR_BITS),
        })

    def elaborate(self, platform):
        cfg = self.config
        m = Module()
        word = Signal(INSTR_BITS)
        last = Signal()
        header = data.View(header_layout(), word)
        opcode = header.opcode

        with m.If(self.start):
            m.d.sync += [word.eq(self.word), last.eq(self.last)]
        # ``held`` is a copy of ``word`` one cycle behind, not ``word`` itself: its readers
        # (the sequencer's queues) and the decode logic each get a register of their own, so
        # placement does not stretch one register between the two (on the routed ULX3S core
        # that net was 10.6 of the critical path's 22.4 ns).
        held = Signal(INSTR_BITS)
        m.d.sync += held.eq(word)
        m.d.comb += self.held.eq(held)

        # ---------------------------------------------------------------- stage 1: ILLEGAL, rules
        illegal = Signal()
        rule_code = Signal(ERROR_BITS)
        queue = Signal(range(NQ + 1), init=NQ)
        m.d.comb += illegal.eq(1)                       # unknown opcodes
        with m.Switch(opcode):
            for op in Opcode:
                spec = SPECS[op]
                a = _Fields(data.View(fields_of(op), word))
                end = HEADER_BITS + sum(f.bits for f in FORMATS[op])
                bad = [word[end:] != 0] if end < INSTR_BITS else []
                for f in FORMATS[op]:
                    if f.enum is not None and f.hi < (1 << f.bits) - 1:
                        bad.append(a[f.name] > f.hi)
                q = QUEUE_OF[op]
                if q is None:
                    bad += [header.wait != 0, header.signal != 0, ~last]
                else:
                    bad += [header.wait[int(q)], header.signal[int(q)]]
                with m.Case(int(op)):
                    m.d.comb += [illegal.eq(_any(bad)), queue.eq(NQ if q is None else int(q))]
                    # The first failing rule decides (reverse order: earlier rules win).
                    for rule in reversed(_rules_of(spec, cfg)):
                        with m.If(~_bool(rule.ok(cfg, a))):
                            m.d.comb += rule_code.eq(int(rule.code))
        not_halt_last = Signal()
        m.d.comb += not_halt_last.eq(last & (opcode != int(Opcode.HALT)))

        # ---------------------------------------------------------------- pattern pipeline
        step = Signal(range(MAX_PATTERNS + 4))
        running = Signal()
        error = Signal(ERROR_BITS)
        valid = Signal()
        m.d.sync += valid.eq(0)
        m.d.comb += [self.valid.eq(valid), self.error.eq(error), self.busy.eq(running)]

        # Select stage (pattern k in step k) -> registers -> multiply stage (step k + 1) ->
        # registers -> compare stage (step k + 2).
        names = list(cfg.regions)
        mask_bits = len(names) + 1                      # + DRAM
        # One pattern's check, as it passes the stages (``a``, ``b``: the multiply's operands).
        pattern = data.StructLayout({"a": 16, "b": 32, "addr": 32, "width": _HI_BITS,
                                     "mask": mask_bits, "apply": 1, "overlap": 1})
        sel = Signal(pattern)                           # select (comb)
        s_pat = Signal(pattern)                         # registered select -> multiply
        r_pat = Signal(pattern)                         # registered multiply -> compare
        r_prod = Signal(_HI_BITS)
        k = Signal(range(MAX_PATTERNS + 4))
        m.d.comb += k.eq(step)
        with m.Switch(opcode):
            for op in Opcode:
                a = _Fields(data.View(fields_of(op), word))
                pats = _patterns_of(SPECS[op], cfg)
                if not pats:
                    continue
                with m.Case(int(op)):
                    with m.Switch(k):
                        for i, p in enumerate(pats):
                            rows = _value(p.rows(cfg, a), 17)
                            stride = _value(p.stride(cfg, a), 32)
                            width = _value(p.width(cfg, a))
                            when = Const(1, 1) if p.when is None else _bool(p.when(cfg, a))
                            mask = 0
                            for r in (p.regions if p.mem != "dram" else ()):
                                mask |= 1 << names.index(r)
                            if p.mem == "dram":
                                mask |= 1 << len(names)
                            with m.Case(i):
                                m.d.comb += [
                                    sel.a.eq(rows - 1), sel.b.eq(stride),
                                    sel.addr.eq(_value(p.addr(cfg, a), 32)), sel.width.eq(width),
                                    sel.mask.eq(mask), sel.apply.eq(when),
                                    sel.overlap.eq(Const(int(p.write), 1) & (rows > 1) & (stride < width)),
                                ]
        m.d.sync += [s_pat.eq(sel), r_pat.eq(s_pat), r_prod.eq(s_pat.a * s_pat.b)]

        # ``addr + (rows - 1) * stride + width <= end`` is compared as ``product <= end -
        # (addr + width)`` with the right side (signed: negative when even the first row
        # does not fit) and ``addr >= base`` computed beside the multiply: the compare stage
        # has no adder.
        aw = Signal(_HI_BITS + 1)
        m.d.comb += aw.eq(s_pat.addr + s_pat.width)
        ends = [(cfg.regions[name].base, cfg.regions[name].end) for name in names]
        fits = []
        for bit, (base, end) in enumerate(ends + [(0, self.dram_size)]):
            ok = Signal(name=f"region_{bit}_ok")                     # mask and addr >= base
            room = Signal(signed(_HI_BITS + 2), name=f"region_{bit}_room")  # end - (addr + width)
            m.d.sync += [ok.eq(s_pat.mask[bit] & (s_pat.addr >= base)),
                         room.eq(_value(end, 32) - aw)]
            fits.append(ok & (r_prod <= room))
        inside = Signal()
        m.d.comb += inside.eq(_any(fits))

        with m.If(self.start):
            m.d.sync += [step.eq(0), running.eq(1)]
        with m.Elif(running):
            m.d.sync += step.eq(step + 1)
            with m.If(step == 0):
                # Stage 1 verdict.
                with m.If(illegal):
                    m.d.sync += error.eq(int(ErrorCode.ILLEGAL))
                with m.Elif(not_halt_last):
                    m.d.sync += error.eq(int(ErrorCode.NO_HALT))
                with m.Else():
                    m.d.sync += error.eq(rule_code)
                m.d.sync += self.queue.eq(queue)
            with m.Elif(step >= 2):
                # Compare pattern step - 2 (selected two cycles ago, multiplied in the
                # previous cycle).
                with m.If((error == 0) & r_pat.apply):
                    with m.If(~inside):
                        m.d.sync += error.eq(int(ErrorCode.RANGE))
                    with m.Elif(r_pat.overlap):
                        m.d.sync += error.eq(int(ErrorCode.CONSTRAINT))
            with m.If(step == MAX_PATTERNS + 1):
                m.d.sync += [running.eq(0), valid.eq(1)]
        return m


def _any(conds) -> "Value":
    conds = [_bool(c) for c in conds]
    if not conds:
        return Const(0, 1)
    return Cat(*conds).any()


def _bool(x):
    """A one-bit value of a condition (an int / bool folds to a constant)."""
    if isinstance(x, (bool, int)):
        return Const(1 if x else 0, 1)
    return x.bool()
