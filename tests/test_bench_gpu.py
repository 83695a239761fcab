"""``rsis bench gpu --device cpu --quick``: every row of the GPU check, measured on the CPU."""

from __future__ import annotations

import re

import pytest

from rsis.cli import main


def _row(printed: str, label: str) -> str:
    found = re.search(rf"^\| {re.escape(label)} \| (.+) \|$", printed, re.M)
    assert found, f"no row {label!r} in:\n{printed}"
    return found[1]


def _number(text: str, unit: str) -> float:
    return float(re.search(rf"([\d.]+) ?{re.escape(unit)}", text)[1])


@pytest.mark.slow
def test_quick_cpu_check_measures_every_part(capsys):
    assert main(["bench", "gpu", "--device", "cpu", "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "| rsis bench gpu --quick on CPU: resnet18, 64x112, batch 4" in printed
    assert _number(_row(printed, "training FLOPs per image"), "GFLOP") > 0
    for mode in ("fp32", "bf16 autocast", "bf16 + channels_last"):
        row = _row(printed, f"train {mode}")
        assert _number(row, "images/s") > 0 and 0 < _number(row.split("MFU")[1], "%") < 100
    assert _row(printed, "train bf16 + channels_last + compile") == "not run (CUDA only)"
    assert _number(_row(printed, "evaluation"), "images/s") > 0
    assert _number(_row(printed, "bert-base-shaped embedding"), "expressions/s") > 0
    torchrun = _row(printed, "torchrun, 1 process")
    assert _number(torchrun, "images/s") > 0 and "backend gloo" in torchrun
    assert _number(_row(printed, "rsis predict"), "s per call") > 0
