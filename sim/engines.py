"""The engines' timing for the schedule model: one :class:`~sim.schedule.EngineModel` per
queue, each the counterpart of an RTL engine of ``hw/core/``.

An instruction's own timing comes from its ISA spec (:meth:`compiler.isa.OpSpec.timing`,
which calls the engine module's timing function through :class:`hw.units.UnitTimings`); what
is added here is the state an engine carries from one instruction to the next:

* LOAD (``hw/core/dma.py``): up to ``LOAD_DEPTH`` instructions in flight, the read data
  channel shared in order (an instruction's first beat waits for the previous one's last);
* STORE: up to ``STORE_DEPTH`` in flight (waiting for write responses), the next one
  ``next`` cycles after a start (the write data channel in order);
* MATRIX and ATTN (``hw/core/tile_engine.py``): the next instruction ``busy`` cycles after a
  start, results ``done`` cycles after it (overlapped);
* VECTOR (``hw/core/vector_engine.py``): one instruction at a time, the next one taken in
  the retire cycle of the current one.
"""
from __future__ import annotations

from compiler.isa import NQ, SPECS, Instruction, Queue
from hw.config import AcceleratorConfig
from hw.units import UnitTimings

from .schedule import EngineModel

__all__ = ["engine_models", "LoadModel", "StoreModel", "TileModel", "VectorModel"]


class _Engine(EngineModel):
    def __init__(self, config: AcceleratorConfig, timings: UnitTimings):
        self.config, self.timings = config, timings
        self.reset()

    def reset(self) -> None:
        self.next_start = 0

    def earliest(self) -> int:
        return self.next_start

    def timing(self, ins: Instruction):
        return SPECS[ins.op].timing(self.config, ins.args, self.timings)


class _Depth:
    """At most ``depth`` instructions between start and retire."""

    def __init__(self, depth: int):
        self.depth = depth
        self.retires: list[int] = []

    def earliest(self) -> int:
        return self.retires[-self.depth] + 1 if len(self.retires) >= self.depth else 0

    def add(self, retire: int) -> None:
        self.retires.append(retire)
        if len(self.retires) > self.depth:
            del self.retires[0]


class LoadModel(_Engine):
    def reset(self) -> None:
        from hw.core.dma import LOAD_DEPTH
        super().reset()
        self.r_free = 0
        self.depth = _Depth(LOAD_DEPTH)

    def earliest(self) -> int:
        return max(self.next_start, self.depth.earliest())

    def start(self, index, ins, t):
        _, retire, self.r_free = self.timing(ins).schedule(t, self.r_free)
        self.next_start = t + 1
        self.depth.add(retire)
        return t + 1, retire


class StoreModel(_Engine):
    def reset(self) -> None:
        from hw.core.dma import STORE_DEPTH
        super().reset()
        self.depth = _Depth(STORE_DEPTH)

    def earliest(self) -> int:
        return max(self.next_start, self.depth.earliest())

    def start(self, index, ins, t):
        st = self.timing(ins)
        self.next_start = t + st.next
        retire = t + st.retire
        self.depth.add(retire)
        return t + st.next, retire


class TileModel(_Engine):
    def start(self, index, ins, t):
        tm = self.timing(ins)
        self.next_start = t + tm.busy
        return t + tm.busy, t + tm.done


class VectorModel(_Engine):
    def start(self, index, ins, t):
        tm = self.timing(ins)
        self.next_start = t + tm.done
        return t + tm.done, t + tm.done


_MODELS = {Queue.LOAD: LoadModel, Queue.MATRIX: TileModel, Queue.ATTN: TileModel,
           Queue.VECTOR: VectorModel, Queue.STORE: StoreModel}


def engine_models(config: AcceleratorConfig, timings: UnitTimings | None = None) -> list[EngineModel]:
    """One engine model per queue, in :class:`~compiler.isa.Queue` order."""
    ut = timings or UnitTimings(config)
    return [_MODELS[Queue(q)](config, ut) for q in range(NQ)]
