"""README's results block is the pipeline's own output, spliced between two markers."""

from __future__ import annotations

import pytest

from rsis.cli import main
from rsis.errors import UserError
from rsis.summary import END, START, splice


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
