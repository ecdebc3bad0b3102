"""Fit the accelerator to a board: the fastest config whose modelled resources fit.

Candidates vary the datapath width ``N`` (array shape and vector lanes), the multiplier
mapping (``lut_mult_cols``: array columns on LUT multipliers; ``norm_lanes``: the LayerNorm
and softmax narrower than ``N``, tried before any LUT column; ``dsp_pack`` is the board's,
:attr:`boards.profiles.BoardProfile.dsp_pack`, unless pinned), the scratchpad, accumulator
and parameter memory sizes and the accumulation-buffer depth.  A candidate must fit the board's
budget by the resource model (:mod:`boards.resources`) and compile the ranking model
(DeiT-Tiny by default) and every model of :data:`TABLE_MODELS` with one set of scratchpad
region shares (their tensors must fit the on-chip memories); the fitting ones are ranked by the
cycle model's latency (:func:`sim.machine.simulate`, timing only) at the board's clock and
bandwidth.  Fields the user pins (``--set``) are held fixed; a pinned config that cannot fit
is refused with :class:`FitError` naming the resource that overflows and by how much, before
any tool runs.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from boards.profiles import BoardProfile
from boards.resources import Resources, estimate
from hw.config import AcceleratorConfig, ConfigError, load_config

__all__ = ["FitError", "Candidate", "FitResult", "fit", "check_fits", "overflow_message",
           "MODELS", "TABLE_MODELS", "model_graph", "model_cycles", "size_regions"]


class FitError(ValueError):
    """No config fits, or a pinned config does not fit (one line saying why)."""


#: Models the fitter ranks by: name -> :func:`compiler.testgraphs.tiny_vit` arguments
#: (random integer graphs with the real model's shapes).
MODELS = {
    "deit_tiny": dict(image=224, patch=16, dim=192, heads=3, depth=12, mlp_ratio=4, classes=1000),
    "deit_small": dict(image=224, patch=16, dim=384, heads=6, depth=12, mlp_ratio=4, classes=1000),
}

#: Models every fitted config must compile (the board tables give the latency of each): the
#: scratchpad's region shares are part of the hardware (the decoder's bound checks and the
#: vector engine's addressing), so one bitstream must hold them all.
TABLE_MODELS = ("deit_tiny", "deit_small")

#: Search space (fields absent from ``pinned``).
WIDTHS = (16, 8, 4)
SCRATCHPAD_KIB = (512, 384, 320, 256, 224, 208, 200, 192, 160, 128, 96, 64)
ACCUMULATOR_KIB = (128, 64, 32, 16, 8)
PARAM_KIB = (16, 8, 4)
#: DeiT (197 tokens) needs at least 197 rows per tile: smaller buffers do not compile it.
TILE_ROWS = (256,)


@dataclass(frozen=True)
class Candidate:
    config: AcceleratorConfig
    resources: Resources


@dataclass(frozen=True)
class FitResult:
    """The chosen config, its modelled resources and its cycles on the ranking model, and
    every candidate the cycle model ranked (``(config, cycles or None)``)."""
    config: AcceleratorConfig
    resources: Resources
    cycles: int
    ranked: tuple


#: Block RAMs the fitter leaves free on open-flow boards, a share of the device's: the
#: resource model's block RAMs were 3-4 % under Yosys's count at N = 8 (207 vs 213, 215 vs
#: 224; docs/BOARDS.md), so a config the model puts within that of the device may not place.
BRAM_MARGIN = 0.04

#: Share of the block RAMs the fitter lets the resource model's memories take on open-flow
#: boards, for routing: at 94 % of the LFE5U-85F's DP16KD (the N = 4 core with a 256 KiB
#: scratchpad) router2 did not converge at four seeds, a few thousand wires staying
#: overused; with a 128 KiB scratchpad (65 %) it routed (docs/BOARDS.md, "Per board").
#: Memory beyond that buys little at an SDRAM's bandwidth: DeiT-Tiny's cycles on the N = 4
#: core differ by under 1 % between 128 and 256 KiB.
BRAM_ROUTE_SHARE = 0.66

#: Share of the LUTs the fitter lets the resource model's logic cells take on open-flow
#: boards, for routing: nextpnr-ecp5 routed the whole core at 41.6 % of the LFE5U-85F's
#: LUT4s (packed) and did not route the N = 8 fit at 81.7 % with any placer or router
#: option tried (docs/BOARDS.md, "The full core"); packing adds 9-15 % to the model's count.
LUT_ROUTE_SHARE = 0.60


def budget_of(board: BoardProfile) -> dict[str, int]:
    return board.budget


def fit_budget(board: BoardProfile, routing: bool = True) -> dict[str, int]:
    """The budget the fitter chooses within: on open-flow boards the block RAMs capped at
    :data:`BRAM_ROUTE_SHARE` of the device's and the logic cells at :data:`LUT_ROUTE_SHARE`
    of its LUTs (``routing=True``), or only :data:`BRAM_MARGIN` of the block RAMs left free
    (``routing=False``, the fitter's second choice); the whole budget elsewhere (a pinned
    config is checked against the whole budget)."""
    budget = dict(board.budget)
    if board.open_flow:
        if routing:
            budget["bram"] = int(budget["bram"] * BRAM_ROUTE_SHARE)
            budget["lut"] = int(budget["lut"] * LUT_ROUTE_SHARE)
        else:
            budget["bram"] = int(budget["bram"] * (1 - BRAM_MARGIN))
    return budget


def resources_on(config: AcceleratorConfig, board: BoardProfile) -> Resources:
    return estimate(config, board.family, board.bram_kbits, board.urams)


_NAMES = {"lut": "LUTs", "ff": "flip-flops", "dsp": "multiplier blocks", "bram": "block RAMs",
          "uram": "UltraRAMs"}


def overflow_message(config: AcceleratorConfig, board: BoardProfile) -> str | None:
    """One line naming every overflowing resource and by how much, or ``None`` if it fits."""
    res = resources_on(config, board)
    over = res.overflow(board.budget)
    if not over:
        return None
    parts = [f"{_NAMES[k]} {need:,} of {have:,} (over by {need - have:,}, {100 * need / max(have, 1):.0f}%)"
             for k, need, have in over]
    norm = f", norm_lanes={config.norm_lanes}" if config.norm_lanes else ""
    return (f"N={config.lanes}, lut_mult_cols={config.lut_mult_cols}{norm}, dsp_pack={config.dsp_pack}, "
            f"scratchpad {config.scratchpad_kib} KiB, accumulator {config.accumulator_kib} KiB "
            f"does not fit {board.name} by the resource model: " + "; ".join(parts))


def check_fits(config: AcceleratorConfig, board: BoardProfile) -> Resources:
    msg = overflow_message(config, board)
    if msg:
        raise FitError(msg)
    return resources_on(config, board)


def _with_board(config: AcceleratorConfig, board: BoardProfile, clock_mhz: float | None) -> AcceleratorConfig:
    clock = clock_mhz or board.clock_mhz
    return config.replace(**board.config_overrides(clock, config.lanes))


def candidates(board: BoardProfile, pinned: dict, clock_mhz: float | None = None) -> Iterable[AcceleratorConfig]:
    """Every config of the search space that agrees with ``pinned``, per width the smallest
    number of LUT-multiplier columns whose DSP count fits (more only wastes LUTs)."""
    widths = [pinned["array_rows"]] if "array_rows" in pinned else WIDTHS
    for n in widths:
        for spad in ([pinned["scratchpad_kib"]] if "scratchpad_kib" in pinned else SCRATCHPAD_KIB):
            for acc in ([pinned["accumulator_kib"]] if "accumulator_kib" in pinned else ACCUMULATOR_KIB):
                for rows, par in [(r, p) for r in ([pinned["max_tile_rows"]] if "max_tile_rows" in pinned else TILE_ROWS)
                                  for p in ([pinned["param_kib"]] if "param_kib" in pinned else PARAM_KIB)]:
                    # The board's packing, unless pinned (or an odd pinned lut_mult_cols
                    # splits a pair: then unpacked).
                    pack = pinned.get("dsp_pack", board.dsp_pack
                                      if pinned.get("lut_mult_cols", 0) % 2 == 0 else 1)
                    base = {**pinned, "array_rows": n, "scratchpad_kib": spad,
                            "accumulator_kib": acc, "max_tile_rows": rows, "param_kib": par,
                            "dsp_pack": pack}
                    # LUT columns are whole packed pairs when dsp_pack = 2.
                    lut_options = ([pinned["lut_mult_cols"]] if "lut_mult_cols" in pinned
                                   else range(0, n + 1, pack))
                    found = _first_fitting_dsps(board, base, lut_options, _norm_options(n, pinned),
                                                clock_mhz)
                    if found is not None:
                        yield found


def _norm_options(n: int, pinned: dict) -> list[int]:
    """``norm_lanes`` to try at width ``n``, widest first: ``N`` (0), ``N / 2``, ... 2."""
    if "norm_lanes" in pinned:
        return [pinned["norm_lanes"]]
    return [0] + [lanes for lanes in (n // 2 ** k for k in range(1, 7)) if lanes >= 2]


def _first_fitting_dsps(board: BoardProfile, base: dict, lut_options, norm_options,
                        clock_mhz: float | None) -> AcceleratorConfig | None:
    """The config of ``base`` with the fewest LUT-multiplier columns, then the widest
    LayerNorm and softmax, whose multiplier blocks fit the board (narrower units cost
    cycles in two units and save logic; LUT multipliers cost logic)."""
    for lut in lut_options:
        for norm in norm_options:
            try:
                cfg = _with_board(load_config(None, **{**base, "lut_mult_cols": lut,
                                                       "norm_lanes": norm}), board, clock_mhz)
            except ConfigError:
                continue
            if resources_on(cfg, board).dsp <= board.dsps:
                return cfg
    return None


def model_graph(model: str = "deit_tiny"):
    from compiler.testgraphs import tiny_vit
    if model not in MODELS:
        raise FitError(f"unknown model {model!r} (known: {', '.join(MODELS)})")
    return tiny_vit(**MODELS[model])


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitamin" / "fit"


def _source_key() -> str:
    """Hash of the compiler's, the cycle model's and the hardware units' sources (the units'
    timing functions are the cycle model's): a changed model never serves an old cached
    latency."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for package in ("compiler", "sim", "hw"):
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def model_cycles(config: AcceleratorConfig, model: str = "deit_tiny", cache: bool = True) -> int | None:
    """Cycles of ``model`` on ``config`` by the cycle model (timing only), or ``None`` when
    the model does not compile for it (a tensor larger than its on-chip memory).  Cached on
    disk by config, model and the model sources."""
    key = hashlib.sha256(json.dumps([config.to_dict(), model, _source_key()],
                                    sort_keys=True).encode()).hexdigest()[:20]
    path = _cache_dir() / f"{key}.json"
    if cache and path.is_file():
        try:
            return json.loads(path.read_text())["cycles"]
        except (ValueError, KeyError, OSError):
            pass
    from compiler.lower import CompileError, compile_graph
    from sim.machine import simulate
    try:
        image = compile_graph(model_graph(model), config)
    except CompileError:
        cycles = None
    else:
        cycles = int(simulate(image, functional=False).cycles)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"cycles": cycles, "config": config.to_dict(), "model": model}))
        except OSError:
            pass
    return cycles


def size_regions(config: AcceleratorConfig, models="deit_tiny",
                 attempts: int = 24) -> AcceleratorConfig | None:
    """``config`` with scratchpad shares (``spad_shares``) sized for ``models`` (one name or
    several; one set of shares must hold them all): compiled with the current shares, a
    region too small for one row of some op's working set gets the share that holds it, taken
    one 32nd at a time from the region with the largest share that was not raised.
    ``config`` itself when every model compiles as it is; ``None`` when no reshuffle of the
    scratchpad holds them (or a model needs more than the scratchpad, e.g. parameter
    records)."""
    from compiler.lower import CompileError, compile_graph
    from hw.config import SPAD_REGIONS, _parse_shares, format_shares
    models = (models,) if isinstance(models, str) else tuple(models)
    shares = {k: v[0] for k, v in _parse_shares(config.spad_shares).items()}
    raised: set[str] = set()
    graphs = [model_graph(m) for m in models]
    for _ in range(attempts):
        cfg = config.replace(spad_shares=format_shares(shares))
        short = None
        for graph in graphs:
            try:
                compile_graph(graph, cfg)
            except CompileError as exc:
                short = {k: v for k, v in getattr(exc, "short", {}).items() if k in SPAD_REGIONS}
                if not short:
                    return None
                break
        if short is None:
            return cfg
        for mem, need in short.items():
            # A region gets total * share // 32 rounded down to whole rows.
            share = shares[mem]
            while share <= 32 and config.scratchpad_bytes * share // 32 // config.lanes * config.lanes < need:
                share += 1
            if share > 32:
                return None
            shares[mem] = share
            raised.add(mem)
        while sum(shares.values()) > 32:
            donors = [k for k in shares if k not in raised and shares[k] > 1]
            if not donors:
                return None
            donor = max(donors, key=lambda k: (shares[k], -list(SPAD_REGIONS).index(k)))
            shares[donor] -= 1
    return None


def fit(board: BoardProfile, pinned: dict | None = None, model: str = "deit_tiny",
        clock_mhz: float | None = None, progress: Callable[[str], None] | None = None,
        cycles_of: Callable[[AcceleratorConfig], int | None] | None = None,
        max_ranked: int = 6, require: tuple = TABLE_MODELS) -> FitResult:
    """The fastest config for ``board`` (module docstring).

    ``pinned``: config fields held fixed.  ``cycles_of``: the ranking function (default: the
    cycle model on ``model``; ``None`` when the model does not compile for the config);
    ``max_ranked``: how many compiling candidates the cycle model ranks, at most two per
    width, largest datapath and memories first (configs with memories no larger than one
    that did not compile are skipped).  ``require``: with the cycle model ranking, models
    that must compile on the chosen config too (the scratchpad shares are sized for all of
    them and ``model`` together).
    """
    pinned = dict(pinned or {})
    say = progress or (lambda s: None)
    # Scratchpad shares sized for the model (size_regions) when the cycle model ranks and
    # the shares are not pinned.
    size_model = cycles_of is None and "spad_shares" not in pinned
    if cycles_of is None:
        others = tuple(m for m in require if m != model)
        for m in others:
            if m not in MODELS:
                raise FitError(f"unknown model {m!r} (known: {', '.join(MODELS)})")

        def cycles_of(cfg):
            # Ranked by ``model``; a config that does not compile every required model
            # does not count as compiling.
            cycles = model_cycles(cfg, model)
            if cycles is None or any(model_cycles(cfg, m) is None for m in others):
                return None
            return cycles
    else:
        others = ()
    cands = list(candidates(board, pinned, clock_mhz))
    # Within the routing margins (fit_budget); failing that, the whole device less the
    # resource model's block RAM error; failing that, the whole device (with a warning).
    tiers = ((fit_budget(board), None),
             (fit_budget(board, routing=False), f"{100 * (1 - BRAM_MARGIN):.0f} % of its block RAMs"),
             (board.budget, "the whole device"))
    for budget, fallback in tiers:
        fitting = [c for c in cands if not resources_on(c, board).overflow(budget)]
        if fitting:
            break
    if fitting and fallback:
        say(f"warning: no config {'with the pinned fields ' if pinned else ''}fits "
            f"{board.name} within the fitter's routing margins (block RAMs "
            f"{100 * BRAM_ROUTE_SHARE:.0f} %, logic {100 * LUT_ROUTE_SHARE:.0f} % of the LUTs); "
            f"choosing from {fallback}, which may not route")
    if not fitting:
        # Name what overflows for the closest candidate (or the pinned config itself).
        try:
            probe = cands[0] if cands else _with_board(load_config(None, **pinned), board, clock_mhz)
        except ConfigError as exc:
            raise FitError(str(exc)) from None
        raise FitError(overflow_message(probe, board) or f"no config fits {board.name}")
    # Largest datapath first, then largest memories: the candidates most likely fastest.
    fitting.sort(key=lambda c: (-c.lanes, c.lut_mult_cols, -c.norm_unit_lanes, -c.scratchpad_kib,
                                -c.accumulator_kib, -c.max_tile_rows, -c.param_kib))
    ranked = []
    per_width: dict[int, int] = {}
    failed: list[AcceleratorConfig] = []

    def smaller_than_failed(cfg):
        # Memories no larger than a config that did not compile cannot compile either.
        return any(f.lanes == cfg.lanes and f.max_tile_rows >= cfg.max_tile_rows and
                   f.scratchpad_kib >= cfg.scratchpad_kib and f.accumulator_kib >= cfg.accumulator_kib
                   and f.param_kib >= cfg.param_kib for f in failed)

    for cfg in fitting:
        if sum(per_width.values()) >= max_ranked:
            break
        # At most two memory variants per width are ranked (the largest that compile).
        if per_width.get(cfg.lanes, 0) >= 2 or smaller_than_failed(cfg):
            continue
        say(f"cycle model: N={cfg.lanes} lut_mult_cols={cfg.lut_mult_cols} "
            + (f"norm_lanes={cfg.norm_lanes} " if cfg.norm_lanes else "") +
            f"scratchpad {cfg.scratchpad_kib} KiB accumulator {cfg.accumulator_kib} KiB "
            f"parameters {cfg.param_kib} KiB, DRAM {cfg.dram_bytes} B/cycle ...")
        cycles = cycles_of(cfg)
        # Region shares that compile but whose memories overflow the budget: smaller
        # memories (sized anew) may still fit and compile, so this one does not rule them out.
        over_sized = False
        if cycles is None and size_model:
            sized = size_regions(cfg, (model, *others))
            if sized is not None and sized != cfg:
                if resources_on(sized, board).overflow(budget):
                    over_sized = True
                else:
                    say(f"  -> does not compile with the default region shares; sized for "
                        f"{', '.join((model, *others))}: "
                        f"spad_shares {sized.spad_shares} ...")
                    cfg = sized
                    cycles = cycles_of(cfg)
        say(f"  -> {'does not compile' if cycles is None else f'{cycles:,} cycles'}"
            + (" (the region shares it needs overflow the budget)" if over_sized else ""))
        ranked.append((cfg, cycles))
        if cycles is not None:
            per_width[cfg.lanes] = per_width.get(cfg.lanes, 0) + 1
        elif not over_sized:
            failed.append(cfg)
    ok = [(cfg, cyc) for cfg, cyc in ranked if cyc is not None]
    if not ok:
        raise FitError(f"no config that fits {board.name} compiles {', '.join((model, *others))} "
                       f"(its tensors need more on-chip memory than fits)")
    best, cycles = min(ok, key=lambda t: (t[1] / t[0].clock_mhz, -t[0].lanes))
    return FitResult(best, resources_on(best, board), cycles, tuple(ranked))
