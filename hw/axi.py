"""AXI4 (memory-mapped, full) and AXI4-Lite interface signatures, from the manager's side.

Only the signals the accelerator drives or reads are members; the rest of the AXI4 signal
set (``*lock``, ``*cache``, ``*prot``, ``*qos``, ``*region``, ``*user``) takes its default
value at the shell (docs/ACCELERATOR.md lists the defaults).  Flattened by Amaranth, member
``m_axi`` of a component gives Verilog ports ``m_axi__awaddr`` and so on, the names
``cocotbext.axi.AxiBus.from_prefix(dut, "m_axi", bus_separator="__")`` expects.

All channels use valid / ready handshakes: a transfer happens in a cycle with both high.
"""
from __future__ import annotations

import enum

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AxiBurst", "AxiResp", "axi4_signature", "axi4_read_signature",
           "axi4_write_signature", "axi4_lite_signature", "AXI_BURST_MAX_BEATS", "AXI_BOUNDARY"]

#: Most beats of one INCR burst (``len`` + 1).
AXI_BURST_MAX_BEATS = 256
#: An INCR burst must not cross an address boundary of this many bytes.
AXI_BOUNDARY = 4096


class AxiBurst(enum.IntEnum):
    FIXED = 0
    INCR = 1
    WRAP = 2


class AxiResp(enum.IntEnum):
    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


def _check(addr_width: int, data_bytes: int) -> None:
    if not 12 <= addr_width <= 64:
        raise ValueError(f"addr_width must be in 12..64, got {addr_width}")
    if data_bytes < 1 or data_bytes & (data_bytes - 1) or data_bytes > 128:
        raise ValueError(f"data_bytes must be a power of two in 1..128, got {data_bytes}")


def axi4_signature(addr_width: int = 32, data_bytes: int = 16, id_width: int = 1) -> wiring.Signature:
    """An AXI4 manager port (the accelerator's memory port): five channels, INCR bursts of
    ``data_bytes``-byte beats (``*size`` = log2 ``data_bytes``)."""
    _check(addr_width, data_bytes)
    size_bits, len_bits = 3, 8
    return wiring.Signature({
        # write address
        "awid": Out(id_width), "awaddr": Out(addr_width), "awlen": Out(len_bits),
        "awsize": Out(size_bits), "awburst": Out(2), "awvalid": Out(1), "awready": In(1),
        # write data
        "wdata": Out(8 * data_bytes), "wstrb": Out(data_bytes), "wlast": Out(1),
        "wvalid": Out(1), "wready": In(1),
        # write response
        "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        # read address
        "arid": Out(id_width), "araddr": Out(addr_width), "arlen": Out(len_bits),
        "arsize": Out(size_bits), "arburst": Out(2), "arvalid": Out(1), "arready": In(1),
        # read data
        "rid": In(id_width), "rdata": In(8 * data_bytes), "rresp": In(2), "rlast": In(1),
        "rvalid": In(1), "rready": Out(1),
    })


_READ = ("arid", "araddr", "arlen", "arsize", "arburst", "arvalid", "arready",
         "rid", "rdata", "rresp", "rlast", "rvalid", "rready")


def axi4_read_signature(addr_width: int = 32, data_bytes: int = 16, id_width: int = 1) -> wiring.Signature:
    """The read half (AR, R) of :func:`axi4_signature`."""
    full = axi4_signature(addr_width, data_bytes, id_width).members
    return wiring.Signature({name: full[name] for name in _READ})


def axi4_write_signature(addr_width: int = 32, data_bytes: int = 16, id_width: int = 1) -> wiring.Signature:
    """The write half (AW, W, B) of :func:`axi4_signature`."""
    full = axi4_signature(addr_width, data_bytes, id_width).members
    return wiring.Signature({name: member for name, member in full.items() if name not in _READ})


def axi4_lite_signature(addr_width: int = 12, data_bytes: int = 4) -> wiring.Signature:
    """An AXI4-Lite manager port (flip it for the accelerator's control port)."""
    if not 4 <= addr_width <= 32:
        raise ValueError(f"addr_width must be in 4..32, got {addr_width}")
    if data_bytes not in (4, 8):
        raise ValueError(f"AXI4-Lite data is 4 or 8 bytes, got {data_bytes}")
    return wiring.Signature({
        "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(8 * data_bytes), "wstrb": Out(data_bytes), "wvalid": Out(1), "wready": In(1),
        "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
        "rdata": In(8 * data_bytes), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
    })
