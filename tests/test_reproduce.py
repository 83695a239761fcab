"""``rsis reproduce``: a rerun's table cells against a reference block, by the rule and a test."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy import stats

from rsis.cli import main
from rsis.errors import UserError
from rsis.reproduce import Cell, compare, read_cells

README = Path(__file__).resolve().parent.parent / "README.md"

CAPTION = "Table {n}: results. Each cell: ours as mean ± sd over seeds 0, 1, 2 (the mean alone)."
HEADER = "| Order | Batch | Instance IoU val | Overall IoU val |\n|:--|:--|:--|:--|\n"


def block(rows: list[str], n: int = 2) -> str:
    """A results block with one table of ``rows`` (markdown table lines), as rsis summary."""
    return f"#### Table {n}\n\n{CAPTION.format(n=n)}\n\n{HEADER}" + "\n".join(rows) + "\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_cells_are_read_with_their_labels_and_seed_count(tmp_path: Path) -> None:
    path = write(
        tmp_path, "a.md", block(["| Random | 16 | 75.94 ± 1.37 (42.66) | 77.85 ± 2.04 (—) |"])
    )
    cells = read_cells(path)
    assert cells == {
        ("Table 2", "Random / 16", "Instance IoU val"): Cell(75.94, 1.37, 3),
        ("Table 2", "Random / 16", "Overall IoU val"): Cell(77.85, 2.04, 3),
    }


def test_readme_block_against_a_rerun_with_one_cell_moved() -> None:
    """The committed README's block: every Table 1 and Table 2 cell over three seeds; a rerun
    equal but for one cell moved by four of its sds is flagged at that cell only."""
    cells = read_cells(README)
    tables = {table for table, _, _ in cells}
    assert tables == {"Table 1", "Table 2"}
    assert len(cells) % 6 == 0 and len(cells) >= 6 * 17  # 6 metric columns per row
    assert {cell.seeds for cell in cells.values()} == {3}
    key, cell = next((key, cell) for key, cell in cells.items() if cell.sd > 1)
    rerun = {**cells, key: Cell(cell.mean + 4 * cell.sd, cell.sd, cell.seeds)}
    comparison = compare(cells, rerun).set_index(["table", "row", "column"])
    assert list(comparison.index[~comparison["within_rule"]]) == [key]
    assert list(comparison.index[comparison["differs"]]) == [key]  # Welch: t = 4.9, 4 df
    assert comparison.loc[key, "difference"] == pytest.approx(4 * cell.sd)


def test_rule_and_welch_test_on_known_cells(tmp_path: Path) -> None:
    reference = write(
        tmp_path,
        "ref.md",
        block(
            [
                "| Random | 16 | 70.00 ± 1.00 (1) | 70.00 ± 0.50 (1) |",
                "| Random | 32 | 50.00 ± 0.50 (1) | 60.00 ± 2.00 (1) |",
            ]
        ),
    )
    rerun = write(
        tmp_path,
        "new.md",
        block(
            [
                "| Random | 16 | 70.00 ± 1.00 (1) | 73.00 ± 5.00 (1) |",  # same; wide, +3
                "| Random | 32 | 55.00 ± 0.50 (1) | 64.40 ± 2.00 (1) |",  # +5 tight; +4.4
            ]
        ),
    )
    result = compare(read_cells(reference), read_cells(rerun)).set_index(["row", "column"])
    same = result.loc[("Random / 16", "Instance IoU val")]
    assert same["within_rule"] and same["welch_p"] == 1.0 and not same["differs"]
    wide = result.loc[("Random / 16", "Overall IoU val")]
    # 3 points > 2 x 0.5 + 0.5, but a rerun sd of 5 leaves the means indistinguishable
    assert not wide["within_rule"] and not wide["differs"]
    expected = stats.ttest_ind_from_stats(70, 0.5, 3, 73, 5, 3, equal_var=False).pvalue
    assert wide["welch_p"] == pytest.approx(expected) and 0.3 < expected < 0.5
    tight = result.loc[("Random / 32", "Instance IoU val")]
    assert not tight["within_rule"] and tight["differs"] and tight["welch_p"] < 1e-3
    edge = result.loc[("Random / 32", "Overall IoU val")]  # 4.4 <= 2 x 2 + 0.5
    assert edge["within_rule"] and edge["difference"] == pytest.approx(4.4)


def test_command_prints_and_writes_the_flagged_cells(tmp_path: Path, capsys) -> None:
    reference = write(
        tmp_path, "ref.md", block(["| Random | 32 | 50.00 ± 0.50 (1) | 60.00 ± 2.00 (1) |"])
    )
    rerun = write(
        tmp_path, "new.md", block(["| Random | 32 | 55.00 ± 0.50 (1) | 60.00 ± 2.00 (1) |"])
    )
    out = tmp_path / "report.md"
    argv = ["reproduce", "--reference", str(reference), "--rerun", str(rerun), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        "2 cells compared. Outside 2 reference sds + 0.5 points: 1. Welch's t-test p < 0.05: 1"
        in printed
    )
    assert "Random / 32" in printed and "+5.00" in printed and "60.00 ±" not in printed
    assert out.read_text() == printed


def test_missing_cells_and_blocks_without_tables_are_refused(tmp_path: Path) -> None:
    reference = write(
        tmp_path, "ref.md", block(["| Random | 16 | 70.00 ± 1.00 (1) | 70.00 ± 0.50 (1) |"])
    )
    other = write(
        tmp_path, "other.md", block(["| Random | 64 | 70.00 ± 1.00 (1) | 70.00 ± 0.50 (1) |"])
    )
    with pytest.raises(
        UserError, match=r"2 cell\(s\) .* Table 2, row 'Random / 16', column 'Instance IoU val'"
    ):
        compare(read_cells(reference), read_cells(other))
    with pytest.raises(UserError, match="no 'mean ± sd' cells"):
        read_cells(write(tmp_path, "empty.md", "# no tables here\n"))
    with pytest.raises(UserError, match="no such file"):
        read_cells(tmp_path / "missing.md")
    ragged = write(tmp_path, "ragged.md", block(["| Random | 16 | 70.00 ± 1.00 (1) |"]))
    with pytest.raises(UserError, match="a row of Table 2 has 3 cells, its header 4"):
        read_cells(ragged)


def test_a_level_outside_0_1_and_a_non_utf8_block_are_refused(tmp_path: Path, capsys) -> None:
    reference = write(
        tmp_path, "ref.md", block(["| Random | 32 | 50.00 ± 0.50 (1) | 60.00 ± 2.00 (1) |"])
    )
    argv = ["reproduce", "--reference", str(reference), "--rerun", str(reference)]
    for level in ("2", "-0.1", "0", "1"):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, f"--level={level}"])
        assert exit_.value.code == 2
        assert f"argument --level: '{level}' is not a test level" in capsys.readouterr().err
    binary = tmp_path / "bin.md"
    binary.write_bytes(b"#### Table 2\n\xff\xfe\x00 not text")
    rerun = ["reproduce", "--reference", str(reference), "--rerun", str(binary)]
    assert main(rerun) == 2
    assert f"rsis reproduce: error: {binary} is not UTF-8 text" in capsys.readouterr().err
