"""``rsis.usage``: every rsis command ends its log with its exact CPU time and peak memory."""

from __future__ import annotations

import logging
import time

from rsis.cli import main
from rsis.usage import read_usage, usage_line


def test_usage_line_counts_this_process_cpu_and_reads_back(tmp_path):
    start = time.process_time()
    sum(i * i for i in range(2_000_000))  # burn some CPU in this process
    spent = time.process_time()
    assert spent - start > 0
    log = tmp_path / "rule.log"
    log.write_text(f"earlier line\n{usage_line()}\n")
    cpu, peak_mb = read_usage(log)
    assert cpu >= spent - 0.01  # the whole process's CPU so far, at least what it burned
    assert 10 < peak_mb < 100_000  # a Python process with numpy and torch imported
    assert read_usage(tmp_path / "missing.log") is None
    (tmp_path / "plain.log").write_text("no usage here\n")
    assert read_usage(tmp_path / "plain.log") is None


def test_a_command_logs_its_usage_on_success_only(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="rsis"):
        assert main(["bench", "rehearsal", "--small", str(tmp_path), "--large", str(tmp_path)]) == 2
    assert "resources used:" not in caplog.text  # failed: no usage line
    demo = ["demo", "--out", str(tmp_path / "out"), "--workers", "0", "--train-images", "2"]
    demo += ["--val-images", "1", "--testa-images", "1", "--testb-images", "1"]
    with caplog.at_level(logging.INFO, logger="rsis"):
        assert main(demo) == 0
    last = caplog.records[-1]
    assert last.name == "rsis" and last.getMessage().startswith("resources used:")
