"""Board profiles, the resource model and the fitter (synthetic budgets, no tools run)."""
from __future__ import annotations

import dataclasses

import pytest

from boards.fit import FitError, candidates, check_fits, fit, fit_budget, overflow_message, resources_on
from boards.profiles import PROFILES, BoardError, BoardProfile, get_profile
from boards.resources import (MemoryShape, Resources, bram_blocks, core_memories, estimate,
                              macs_per_dsp, products_per_dsp)
from hw.config import AcceleratorConfig, ConfigError, load_config


# ---------------------------------------------------------------------------- profiles

def test_every_listed_board_is_there():
    for name in ("ulx3s-85f", "orangecrab-85f", "zcu102", "zcu104", "kv260", "pynq-z2",
                 "arty-a7-100t"):
        p = get_profile(name)
        assert p.name == name and p.sources
    assert get_profile("ULX3S-85F").name == "ulx3s-85f"
    assert get_profile("ulx3s-85f").open_flow and not get_profile("zcu104").open_flow
    assert get_profile("ulx3s-85f").budget == {"lut": 83_640, "ff": 83_640, "dsp": 156,
                                               "bram": 208, "uram": 0}


def test_unknown_board():
    with pytest.raises(BoardError, match="unknown board 'nope'.*ulx3s-85f"):
        get_profile("nope")


@pytest.mark.parametrize("change,match", [
    (dict(name="Has Space"), "lower case"),
    (dict(family="stratix"), "unknown family"),
    (dict(toolchain="quartus"), "unknown toolchain"),
    (dict(dsps=-1), "non-negative"),
    (dict(luts=1.5), "integer"),
    (dict(bram_kbits=20), "bram_kbits"),
    (dict(urams=4), "UltraRAM"),
    (dict(dram_mbps=0), "dram_mbps"),
    (dict(platform=""), "needs platform"),
])
def test_profile_validation(change, match):
    base = get_profile("ulx3s-85f")
    with pytest.raises(BoardError, match=match):
        dataclasses.replace(base, **change)


def test_ecp5_toolchain_needs_ecp5():
    with pytest.raises(BoardError, match="ECP5 parts only"):
        dataclasses.replace(get_profile("zcu104"), toolchain="ecp5")


def test_bytes_per_cycle():
    b = get_profile("ulx3s-85f")            # 140 MB/s
    assert b.bytes_per_cycle(50.0, 8) == 2       # 2.8 B/cycle -> 2
    assert b.bytes_per_cycle(100.0, 8) == 1      # 1.4 -> 1
    assert b.bytes_per_cycle(500.0, 8) == 1      # never below 1
    z = get_profile("zcu102")               # 2560 MB/s
    assert z.bytes_per_cycle(200.0, 8) == 8      # capped at the datapath width
    assert z.config_overrides(200.0, 8)["dram_bytes_per_cycle"] == 0    # 0 = full width
    assert z.config_overrides(200.0, 16)["dram_bytes_per_cycle"] == 8


# ---------------------------------------------------------------------------- resource model

def test_bram_blocks_shapes():
    # 128-bit rows, byte writes: 4 bytes per DP16KD in 36-bit mode, 512 deep.
    assert bram_blocks(MemoryShape("m", 9216, 128, 8)) == 4 * 18
    # 512-bit rows of words.
    assert bram_blocks(MemoryShape("m", 1536, 512, 32)) == 16 * 3
    # Deep and narrow: 1 bit x 16384 per block.
    assert bram_blocks(MemoryShape("m", 16384, 2, 2)) == 2
    # Small memories are distributed RAM.
    assert bram_blocks(MemoryShape("m", 16, 64, 64)) == 0
    # Xilinx RAMB36: 64 data bits x 512 in 72-bit mode.
    assert bram_blocks(MemoryShape("m", 512, 128, 8), 36) == 2


def test_core_memories_cover_regions():
    cfg = load_config(None)
    names = [m.name for m in core_memories(cfg)]
    assert set(cfg.regions) <= set(names) and "imem" in names
    assert sum(1 for n in names if n.startswith("buffer_")) == 2


def test_estimate_scales_and_lut_multipliers():
    small, big = estimate(load_config("tiny")), estimate(load_config(None))
    assert big.lut > small.lut and big.dsp > small.dsp and big.bram > small.bram
    cfg = load_config("small")
    lut = estimate(cfg.replace(lut_mult_cols=4))
    assert lut.dsp == estimate(cfg).dsp - 8 * 4
    assert lut.lut > estimate(cfg).lut
    # UltraRAM takes the large memories when there is some.
    u = estimate(load_config(None), "ultrascale+", 36, urams=96)
    assert u.uram > 0 and u.bram < estimate(load_config(None), "ultrascale+", 36).bram


def test_dsp_pack_counts_one_dsp48e2_per_pair():
    """dsp_pack = 2 halves the array's DSPs on UltraScale+ only (a packed product does not
    fit a DSP48E1 or a MULT18X18D); LUT columns stay one product per PE in logic."""
    cfg = load_config("small")                               # N = 8
    n = cfg.lanes
    packed = cfg.replace(dsp_pack=2)
    plain_us, packed_us = estimate(cfg, "ultrascale+", 36), estimate(packed, "ultrascale+", 36)
    assert packed_us.dsp == plain_us.dsp - n * n // 2
    assert packed_us.lut > plain_us.lut and packed_us.ff > plain_us.ff
    for family, kbits in (("7series", 36), ("ecp5", 18)):
        assert estimate(packed, family, kbits).dsp == estimate(cfg, family, kbits).dsp
    lut = packed.replace(lut_mult_cols=4)
    assert estimate(lut, "ultrascale+", 36).dsp == plain_us.dsp - n * 4 - n * (n - 4) // 2
    assert products_per_dsp(packed, "ultrascale+") == 2
    assert products_per_dsp(packed, "7series") == products_per_dsp(cfg, "ultrascale+") == 1
    assert macs_per_dsp(packed, packed_us) == n * n / packed_us.dsp
    assert macs_per_dsp(packed, packed_us) > macs_per_dsp(cfg, plain_us)


def test_boards_dsp_pack():
    assert {name: p.dsp_pack for name, p in PROFILES.items()} == {
        name: 2 if p.family == "ultrascale+" else 1 for name, p in PROFILES.items()}
    assert get_profile("zcu104").dsp_pack == 2 and get_profile("pynq-z2").dsp_pack == 1
    assert get_profile("ulx3s-85f").dsp_pack == 1


def test_fit_packs_dsps_on_ultrascale():
    board = dataclasses.replace(get_profile("zcu104"), dsps=200)
    r = fit(board, cycles_of=fake_cycles)
    assert r.config.dsp_pack == 2 and r.config.lut_mult_cols % 2 == 0
    assert r.resources.dsp <= 200
    # The fewest LUT columns (whole pairs) that fit.
    if r.config.lut_mult_cols:
        fewer = r.config.replace(lut_mult_cols=r.config.lut_mult_cols - 2)
        assert resources_on(fewer, board).dsp > 200
    plain = fit(board, {"dsp_pack": 1}, cycles_of=fake_cycles)
    assert plain.config.dsp_pack == 1
    odd = fit(synthetic(), {"lut_mult_cols": 1}, cycles_of=fake_cycles)
    assert odd.config.dsp_pack == 1
    odd = fit(dataclasses.replace(get_profile("zcu104"), dsps=100_000), {"lut_mult_cols": 1},
              cycles_of=fake_cycles)
    assert (odd.config.dsp_pack, odd.config.lut_mult_cols) == (1, 1)
    assert fit(get_profile("pynq-z2"), cycles_of=fake_cycles).config.dsp_pack == 1


def test_overflow_ordering():
    r = Resources(lut=10, ff=10, dsp=300, bram=250)
    over = r.overflow({"lut": 100, "ff": 100, "dsp": 156, "bram": 208, "uram": 0})
    assert [k for k, *_ in over] == ["dsp", "bram"]


# ---------------------------------------------------------------------------- fitting

def synthetic(**budget) -> BoardProfile:
    base = dict(luts=1_000_000, ffs=1_000_000, dsps=100_000, brams=100_000, urams=0)
    base.update(budget)
    return dataclasses.replace(get_profile("ulx3s-85f"), name="synthetic", **base)


def fake_cycles(cfg: AcceleratorConfig) -> int:
    """Faster with a wider datapath and more scratchpad; never compiles below 64 KiB."""
    if cfg.scratchpad_kib < 64:
        return None
    return 10_000_000 // cfg.macs_per_cycle + 1_000_000 // cfg.scratchpad_kib


def test_unlimited_budget_picks_widest():
    r = fit(synthetic(), cycles_of=fake_cycles)
    assert r.config.lanes == 16 and r.config.lut_mult_cols == 0
    assert r.config.scratchpad_kib == 512


def test_dsp_budget_moves_columns_to_luts():
    board = synthetic(dsps=156)
    r = fit(board, cycles_of=fake_cycles)
    res = resources_on(r.config, board)
    assert res.dsp <= 156
    # The fewest LUT columns that fit: one fewer would overflow the multipliers.
    if r.config.lut_mult_cols:
        fewer = r.config.replace(lut_mult_cols=r.config.lut_mult_cols - 1)
        assert resources_on(fewer, board).dsp > 156


def test_estimate_narrow_layernorm_and_softmax():
    """norm_lanes = L takes N - L lanes of the two units off: 12 multipliers a lane (the
    LayerNorm's 5 and the softmax's 7), and their logic, flip-flops and block RAMs."""
    cfg = load_config("small")                          # N = 8
    full, half = estimate(cfg), estimate(cfg.replace(norm_lanes=4))
    assert full.dsp - half.dsp == 4 * 12
    assert half.lut < full.lut and half.ff < full.ff and half.bram < full.bram
    assert estimate(cfg.replace(norm_lanes=2)).dsp == full.dsp - 6 * 12


def test_dsp_budget_narrows_layernorm_and_softmax_before_lut_columns():
    """At N = 8 on 156 multipliers: the array's 64 and the vector units' 138 overflow; the
    LayerNorm and softmax at 4 lanes fit (153) with no LUT column, and at 2 lanes would
    too, but the widest that fits is chosen.  Pinned at the full width, LUT columns are
    the way, and the message of a pinned config that cannot fit names norm_lanes."""
    board = synthetic(dsps=156)
    pin = {"array_rows": 8, "array_cols": 8, "vector_lanes": 8}
    r = fit(board, pin, cycles_of=fake_cycles)
    assert (r.config.lut_mult_cols, r.config.norm_lanes) == (0, 4)
    assert resources_on(r.config, board).dsp <= 156
    assert resources_on(r.config.replace(norm_lanes=0), board).dsp > 156
    full = fit(board, {**pin, "norm_lanes": 0}, cycles_of=fake_cycles).config
    assert full.norm_lanes == 0 and full.lut_mult_cols > 0
    with pytest.raises(FitError, match=r"norm_lanes=2, .* multiplier blocks"):
        fit(synthetic(dsps=100), {**pin, "norm_lanes": 2, "lut_mult_cols": 0}, cycles_of=fake_cycles)


def test_block_ram_budget_limits_memories():
    big = fit(synthetic(), cycles_of=fake_cycles).config
    tight = fit(synthetic(brams=200), cycles_of=fake_cycles).config
    assert estimate(tight).bram <= 200
    assert (tight.lanes, tight.scratchpad_kib) < (big.lanes, big.scratchpad_kib)


def test_pinned_fields_are_kept():
    r = fit(synthetic(), {"array_rows": 8, "array_cols": 8, "vector_lanes": 8,
                          "scratchpad_kib": 256}, cycles_of=fake_cycles)
    assert r.config.lanes == 8 and r.config.scratchpad_kib == 256


def test_board_decides_clock_and_bandwidth():
    board = synthetic()
    r = fit(board, cycles_of=fake_cycles)
    assert r.config.clock_mhz == board.clock_mhz
    assert r.config.dram_bytes == board.bytes_per_cycle(board.clock_mhz, r.config.lanes)
    assert r.config.dram_latency_cycles == board.dram_latency_cycles


def test_pinned_config_that_cannot_fit_names_the_resource():
    board = get_profile("ulx3s-85f")
    with pytest.raises(FitError, match=r"multiplier blocks .* of 156 \(over by"):
        fit(board, {"array_rows": 16, "array_cols": 16, "vector_lanes": 16, "lut_mult_cols": 0,
                    "scratchpad_kib": 512}, cycles_of=fake_cycles)
    with pytest.raises(FitError, match=r"block RAMs [\d,]+ of 208"):
        check_fits(load_config(None, lut_mult_cols=16), board)
    assert overflow_message(load_config("tiny"), synthetic()) is None


def test_nothing_fits_a_tiny_board():
    with pytest.raises(FitError, match="does not fit"):
        fit(synthetic(luts=1000), cycles_of=fake_cycles)


def test_no_candidate_compiles():
    with pytest.raises(FitError, match="compiles"):
        fit(synthetic(), cycles_of=lambda cfg: None)


def test_candidates_respect_pins_and_validation():
    board = synthetic()
    got = list(candidates(board, {"array_rows": 4, "array_cols": 4, "vector_lanes": 4}))
    assert got and all(c.lanes == 4 for c in got)
    with pytest.raises(ConfigError):
        load_config(None, lut_mult_cols=17)


def test_spad_shares_field():
    base = load_config(None, array_rows=8, scratchpad_kib=128)
    cfg = base.replace(spad_shares="value=4,act=7")
    assert cfg.regions["value"].size == 128 * 1024 * 4 // 32
    assert cfg.regions["act"].size == 128 * 1024 * 7 // 32
    assert cfg.regions["weight"].size == base.regions["weight"].size
    assert AcceleratorConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ("value=40", "nothing=3", "value", "value=x"):
        with pytest.raises(ConfigError, match="spad_shares"):
            base.replace(spad_shares=bad)
    from hw.config import parse_overrides
    assert parse_overrides(["spad_shares=value=4"]) == {"spad_shares": "value=4"}


def test_size_regions_for_the_model():
    """N = 8 with 128 KiB: DeiT-Tiny's v of one head (197 x 64 bytes) does not fit the default
    value region (4/32 = 8 KiB); the sized shares hold it and the model compiles."""
    from boards.fit import size_regions
    from compiler.lower import CompileError, compile_graph
    from boards.fit import model_graph
    cfg = load_config(None, array_rows=8, scratchpad_kib=128, accumulator_kib=8, param_kib=4)
    with pytest.raises(CompileError) as err:
        compile_graph(model_graph("deit_tiny"), cfg)
    assert err.value.short == {"value": 12800}
    sized = size_regions(cfg, "deit_tiny")
    assert sized is not None and sized.regions["value"].size >= 12800
    assert sum(r.size for r in sized.regions.values() if r.space == "spad") <= 128 * 1024
    compile_graph(model_graph("deit_tiny"), sized)
    assert size_regions(load_config(None, array_rows=8, scratchpad_kib=8), "deit_tiny") is None


def test_fitter_leaves_block_ram_room_on_open_flow_boards():
    """Open-flow boards: the block RAMs capped at BRAM_ROUTE_SHARE (routing), else at the
    model's error margin with a warning; Verilog-only boards keep their whole budget."""
    from boards.fit import BRAM_MARGIN, BRAM_ROUTE_SHARE, candidates, fit_budget
    ulx = get_profile("ulx3s-85f")
    assert fit_budget(ulx)["bram"] == int(208 * BRAM_ROUTE_SHARE) < int(208 * (1 - BRAM_MARGIN))
    assert fit_budget(ulx, routing=False)["bram"] == int(208 * (1 - BRAM_MARGIN))
    assert fit_budget(ulx, routing=False)["lut"] == ulx.budget["lut"]
    assert fit_budget(ulx)["dsp"] == ulx.budget["dsp"]
    zcu = get_profile("zcu104")
    assert fit_budget(zcu) == fit_budget(zcu, routing=False) == zcu.budget
    said = []
    r = fit(synthetic(brams=200), cycles_of=fake_cycles, progress=said.append)
    assert estimate(r.config).bram <= int(200 * BRAM_ROUTE_SHARE)
    assert not any("warning" in s for s in said)
    # A board whose smallest config needs more than the routing share but fits the margin:
    # chosen from the margin's budget, with a warning.
    least = min(estimate(c).bram for c in candidates(synthetic(), {}))
    brams = int(least / (1 - BRAM_MARGIN)) + 2
    board = synthetic(brams=brams)
    assert int(brams * BRAM_ROUTE_SHARE) < least <= int(brams * (1 - BRAM_MARGIN))
    said = []
    r = fit(board, cycles_of=fake_cycles, progress=said.append)
    assert least <= estimate(r.config).bram <= int(brams * (1 - BRAM_MARGIN))
    assert any("routing margins" in s and "may not route" in s for s in said)


def test_fitter_leaves_routing_room_in_the_luts_on_open_flow_boards():
    """The fitter keeps the modelled logic under LUT_ROUTE_SHARE of an open-flow board's
    LUTs (the N = 8 fit at 82 % did not route); a pinned config may use the whole device."""
    from boards.fit import LUT_ROUTE_SHARE, fit_budget
    ulx = get_profile("ulx3s-85f")
    assert fit_budget(ulx)["lut"] == int(83_640 * LUT_ROUTE_SHARE) < ulx.budget["lut"]
    assert fit_budget(get_profile("zcu104"))["lut"] == get_profile("zcu104").budget["lut"]
    # A LUT budget the widest config fits whole but not within the share: a narrower one.
    wide = estimate(load_config(None, array_rows=16, lut_mult_cols=0)).lut
    board = synthetic(luts=int(wide / LUT_ROUTE_SHARE) - 1)
    r = fit(board, cycles_of=fake_cycles)
    assert r.config.lanes < 16 and estimate(r.config).lut <= fit_budget(board)["lut"]
    pinned = fit(board, {"array_rows": 16, "lut_mult_cols": 0}, cycles_of=fake_cycles)
    assert pinned.config.lanes == 16


def test_every_table_model_must_compile_on_the_fitted_config(monkeypatch):
    """A config the ranking model compiles on but another board-table model does not (here:
    DeiT-Small needs 8 KiB of parameter records) is not chosen, even when faster."""
    import boards.fit
    seen = []

    def cycles(cfg, model="deit_tiny", cache=True):
        seen.append(model)
        if model == "deit_small" and cfg.param_kib < 8:
            return None
        return 10_000_000 // cfg.macs_per_cycle + 100 * cfg.param_kib   # smaller params faster
    monkeypatch.setattr(boards.fit, "model_cycles", cycles)
    pin = {"array_rows": 8, "array_cols": 8, "vector_lanes": 8, "spad_shares": "",
           "scratchpad_kib": 128, "accumulator_kib": 16}
    # Block RAMs for the 8 KiB parameter memory and not the 16 KiB one, so that the two
    # ranked per width are the 8 and 4 KiB variants.
    need = {kib: estimate(load_config(None, **pin, param_kib=kib, norm_lanes=4)).bram
            for kib in (16, 8)}
    brams = next(b for b in range(need[8], 10 * need[8]) if fit_budget(synthetic(brams=b))["bram"] >= need[8])
    board = synthetic(dsps=156, brams=brams)
    assert fit_budget(board)["bram"] < need[16]
    r = fit(board, pin)
    assert r.config.param_kib >= 8 and "deit_small" in seen
    # Without the requirement the faster 4 KiB config wins.
    r = fit(board, pin, require=("deit_tiny",))
    assert r.config.param_kib == 4
    with pytest.raises(FitError, match="unknown model 'vit_huge'"):
        fit(board, require=("vit_huge",))


def test_shares_that_overflow_do_not_rule_out_smaller_memories(monkeypatch):
    """A candidate that compiles only with region shares whose memories overflow the budget
    is not proof that smaller memories cannot compile: the next smaller one is sized and
    ranked too (and the overflowing one does not count as one of the two per width)."""
    import boards.fit
    pin = {"array_rows": 8, "array_cols": 8, "vector_lanes": 8, "accumulator_kib": 16,
           "param_kib": 8}
    board = synthetic(brams=3000)
    biggest = max(c.scratchpad_kib for c in candidates(board, pin))

    def cycles(cfg, model="deit_tiny", cache=True):
        return None if not cfg.spad_shares else 1_000_000 // cfg.scratchpad_kib

    def size(cfg, models):
        # The largest scratchpad's shares need a memory beyond any budget.
        grown = {"scratchpad_kib": 100_000} if cfg.scratchpad_kib == biggest else {}
        return cfg.replace(spad_shares="act=8", **grown)
    monkeypatch.setattr(boards.fit, "model_cycles", cycles)
    monkeypatch.setattr(boards.fit, "size_regions", size)
    said = []
    r = fit(board, pin, progress=said.append, require=("deit_tiny",))
    assert r.config.spad_shares == "act=8" and r.config.scratchpad_kib < biggest
    assert any("overflow the budget" in line for line in said)
    assert sum(c is not None for _, c in r.ranked) == 2


def test_size_regions_for_two_models_at_once():
    """One set of shares for DeiT-Tiny and DeiT-Small (the hardware has one); ``None`` when no
    share holds a model (DeiT-Small's 1,536 parameter words do not fit 4 KiB)."""
    from boards.fit import model_graph, size_regions
    from compiler.lower import compile_graph
    cfg = load_config(None, array_rows=8, scratchpad_kib=160, accumulator_kib=32, param_kib=8)
    sized = size_regions(cfg, ("deit_tiny", "deit_small"))
    assert sized is not None
    for m in ("deit_tiny", "deit_small"):
        compile_graph(model_graph(m), sized)
    assert size_regions(cfg.replace(param_kib=4), ("deit_tiny", "deit_small")) is None
