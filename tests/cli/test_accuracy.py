"""``vitamin accuracy``: the digits table (one observer here, to keep the suite short)."""
from __future__ import annotations

from cli.main import main


def test_accuracy_table_for_one_observer(tmp_path, capsys):
    md = tmp_path / "acc.md"
    assert main(["accuracy", "--calib", "minmax", "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("minmax")]
    assert len(rows) == 4                                   # 8/8/8, +PTF, +LIS, +PTF +LIS
    for row in rows:
        cells = row.split()
        fp32, fq, integer = (float(c) for c in cells[-5:-2])
        assert 80.0 < fp32 <= 100.0 and abs(integer - fp32) < 5.0 and abs(fq - fp32) < 5.0
    text = md.read_text()
    assert text.startswith("| method |") and text.count("\n| minmax |") == 4
