"""A hash of everything the core's RTL is generated from, for build caches.

The Amaranth sources under ``hw/``, the ISA table the decoder is generated from
(``compiler/isa.py``), the arithmetic (``sw/intops.py``) and the Amaranth version: a
cached simulator build (:mod:`sim.cosim`) or board build (:mod:`boards.build`) keyed by it
is never reused after the RTL changed.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

__all__ = ["rtl_source_hash"]

_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def rtl_source_hash() -> str:
    """16 hex digits of the sources' SHA-256 (read once per process: call
    ``rtl_source_hash.cache_clear()`` after editing them in the same process)."""
    h = hashlib.sha256()
    files = sorted((_ROOT / "hw").rglob("*.py")) + [_ROOT / "compiler" / "isa.py",
                                                     _ROOT / "sw" / "intops.py"]
    for f in files:
        h.update(f.relative_to(_ROOT).as_posix().encode())
        h.update(f.read_bytes())
    import amaranth
    h.update(amaranth.__version__.encode())
    return h.hexdigest()[:16]
