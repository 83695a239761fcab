"""README's results block is the pipeline's own output, spliced between two markers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import rsis
from rsis.cli import main
from rsis.errors import UserError
from rsis.summary import END, START, commit, splice


def test_summary_writes_the_parts_and_replaces_only_readmes_block(tmp_path):
    (tmp_path / "table1.md").write_text(
        "Table 1 caption\n\n| a |\n|:--|\n| 37.40 ± 2.10 (39.79) |\n"
    )
    (tmp_path / "findings.md").write_text(
        "# The paper's claims\n\n| Verdict |\n|:--|\n| agrees |\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{START}\nold numbers 12.3\n{END}\nafter\n")
    parts = [str(tmp_path / "table1.md"), str(tmp_path / "findings.md")]
    out = tmp_path / "summary.md"
    assert main(["summary", "--parts", *parts, "--out", str(out), "--readme", str(readme)]) == 0
    block = out.read_text()
    assert block.startswith("Written by `rsis summary` from the pipeline's output (commit ")
    assert "#### Table 1\n\nTable 1 caption" in block
    assert "#### The paper's claims" in block and "| 37.40 ± 2.10 (39.79) |" in block
    text = readme.read_text()
    assert text == f"# Title\n\nbefore\n{START}\n{block}{END}\nafter\n"
    assert "old numbers" not in text


def test_a_readme_without_markers_is_refused(tmp_path):
    with pytest.raises(UserError, match="needs one"):
        splice("# no markers\n", "block\n", tmp_path / "README.md")


def test_summary_checks_every_input_before_writing(tmp_path, capsys):
    part = tmp_path / "table1.md"
    part.write_text("Table 1 caption\n\n| a |\n|:--|\n| 1 |\n")
    no_markers = tmp_path / "README.md"
    no_markers.write_text("# Title\n\nno results block\n")
    empty, binary, folder = tmp_path / "table2.md", tmp_path / "bin.md", tmp_path / "folder"
    empty.write_text("\n")
    binary.write_bytes(b"# Findings\n\xff\xfe\x00")
    folder.mkdir()
    out = tmp_path / "summary.md"
    cases = [
        (["--parts", str(part), "--readme", str(tmp_path / "missing.md")], "missing.md: no such"),
        (["--parts", str(part), "--readme", str(no_markers)], "README.md needs one"),
        (["--parts", str(part), str(empty)], f"results part {empty} is empty: rerun `rsis tables`"),
        (["--parts", str(binary)], f"{binary} is not UTF-8 text"),
        (["--parts", str(folder)], f"{folder} is a folder: give a results part"),
    ]
    for argv, message in cases:
        assert main(["summary", *argv, "--out", str(out)]) == 2, argv
        error = capsys.readouterr().err
        assert "rsis summary: error: " in error and message in error, error
        assert not out.exists(), argv
    assert no_markers.read_text() == "# Title\n\nno results block\n"


def test_the_stamped_commit_is_rsis_checkouts_whatever_the_folder(tmp_path, monkeypatch):
    # before: `git rev-parse HEAD` in the working folder: "unknown" here, another
    # project's commit inside another checkout
    repo = Path(rsis.__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "rev-parse", "--short=7", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    monkeypatch.chdir(tmp_path)  # no git checkout
    assert commit().removesuffix("-dirty") == head
