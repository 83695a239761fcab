"""``rsis summary``: the pipeline's results as one Markdown block, and README's copy of it.

The block holds the tables, baselines, convergence summary and findings exactly as the
pipeline wrote them, headed by the machine that ran the summary (the one that ran the
pipeline, unless jobs went to a cluster) and the commit. ``--readme`` replaces the part of
README.md between ``START`` and ``END`` with it, so README's numbers are always the
pipeline's own output, never typed by hand.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

from rsis.cli import add_command, output_file
from rsis.errors import UserError
from rsis.io import atomic_path, read_user_text

START = "<!-- results:start (rsis summary --readme README.md writes this part) -->"
END = "<!-- results:end -->"
# Titles of the parts whose file starts without a "# " heading (the others keep theirs).
PARTS: tuple[tuple[str, str], ...] = (("table1.md", "Table 1"), ("table2.md", "Table 2"))
# The command that writes each part, named when a part is empty.
WRITERS = {
    "table1.md": "rsis tables",
    "table2.md": "rsis tables",
    "baselines.md": "rsis baselines",
    "expression_types.md": "rsis types",
    "convergence.md": "rsis convergence",
    "findings.md": "rsis findings",
}


def machine() -> str:
    """CPU model, core count, memory and GPU of this machine, in one line."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        model = names[0] if names else model
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        memory = f", {kib / 2**20:.0f} GiB memory"
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{model}, {os.cpu_count()} cores{memory}, {gpu}"


def commit() -> str:
    """The commit of the checkout this ``rsis`` is imported from, ``-dirty`` when its files
    differ from it (``unknown`` when it is no git checkout), whatever folder the command
    runs in."""
    try:
        found = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return found.stdout.strip()


def _demote(markdown: str) -> str:
    """Headings one level down to ``####`` at most, so each part sits under README's ``###``."""
    return "\n".join(
        ("###" + line) if line.startswith("# ") else line for line in markdown.splitlines()
    )


def summary_markdown(parts: Sequence[Path], where: str, revision: str) -> str:
    """The results block: a header line, then each part as the pipeline wrote it."""
    names = dict(PARTS)
    sections = []
    for path in parts:
        text = read_user_text(
            path, "a results part written by the pipeline", "a Markdown file"
        ).strip()
        if not text:
            writer = WRITERS.get(Path(path).name)
            fix = (
                f"rerun `{writer}` (or snakemake) to write it"
                if writer
                else "write its content or leave it out of --parts"
            )
            raise UserError(f"results part {path} is empty: {fix}")
        title = names.get(Path(path).name, Path(path).stem)
        sections.append(text if text.startswith("# ") else f"#### {title}\n\n{text}")
    body = "\n\n".join(_demote(section) for section in sections)
    return (
        f"Written by `rsis summary` from the pipeline's output (commit {revision}) on: "
        f"{where}.\n\n{body}\n"
    )


def splice(readme: str, block: str, path: Path) -> str:
    """``readme`` with the text between ``START`` and ``END`` replaced by ``block``."""
    if (
        readme.count(START) != 1
        or readme.count(END) != 1
        or readme.index(START) > readme.index(END)
    ):
        raise UserError(f"{path} needs one {START!r} line followed by one {END!r} line")
    head, rest = readme.split(START)
    tail = rest.split(END)[1]
    return f"{head}{START}\n{block}{END}{tail}"


def _summary_command(args: argparse.Namespace) -> None:
    """Check every input (parts, README and its markers) before writing anything."""
    block = summary_markdown(args.parts, machine(), commit())
    if args.readme:
        readme = read_user_text(
            args.readme, "README.md with the results markers", "a Markdown file"
        )
        updated = splice(readme, block, args.readme)
    with atomic_path(args.out) as tmp:
        tmp.write_text(block)
    if args.readme:
        with atomic_path(args.readme) as tmp:
            tmp.write_text(updated)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis summary``."""
    parser = add_command(subparsers, "summary")
    parser.add_argument(
        "--parts", nargs="+", required=True, type=Path, help="Markdown files, in order"
    )
    parser.add_argument("--out", required=True, type=output_file, help="summary.md to write")
    parser.add_argument("--readme", type=Path, help="also replace README's results block")
    parser.set_defaults(func=_summary_command)
