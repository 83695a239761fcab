"""The rsis command: one subcommand per pipeline step.

Only the module of the chosen subcommand is imported, so ``rsis prepare`` does not pay for
importing transformers and ``rsis --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from rsis.errors import UserError
from rsis.io import IdentityMismatchError
from rsis.usage import usage_line

Number = TypeVar("Number", int, float)

# Subcommand -> (module exposing ``register(subparsers)``, its one help text). A module's
# ``register`` makes its parser with ``add_command``, which takes the help text from here.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("rsis.data.demo.writer", "generate the demo dataset in the refer layout"),
    "prepare": ("rsis.data.cache", "cache one split's resized images and masks in HDF5"),
    "tokenize": ("rsis.text.tokenize", "WordPiece ids of every expression (HDF5)"),
    "embed": ("rsis.text.embed", "pooled and mean embeddings of every expression"),
    "reduce": ("rsis.text.reduce", "native or PCA-reduced expression embeddings"),
    "pretrain": ("rsis.pretrain", "pretrain the demo's ResNet on generated scenes"),
    "probe": ("rsis.probe", "per-pixel linear-probe accuracy of frozen encoders"),
    "features": ("rsis.features", "a frozen encoder's features of every split image, once"),
    "train": ("rsis.train", "train one RRIS configuration"),
    "evaluate": ("rsis.evaluate", "score a checkpoint on one or more splits"),
    "score": (
        "rsis.score",
        "score any model's predicted masks (JSON of sent_id + RLE) under a peer's protocol",
    ),
    "tables": ("rsis.tables", "the paper's Table 1 and Table 2 beside our numbers"),
    "baselines": ("rsis.baselines", "picture-blind demo baselines"),
    "types": ("rsis.expression_types", "IoU per demo expression type of every run over seeds"),
    "convergence": ("rsis.convergence", "best epoch and stopping reason of every run"),
    "findings": ("rsis.findings", "the paper's claims checked on our runs over seeds"),
    "summary": ("rsis.summary", "results block for README from the pipeline's output"),
    "reproduce": ("rsis.reproduce", "a rerun's table cells against README's, with a test"),
    "figures": ("rsis.figures.command", "qualitative figures (paper Fig. 2/3 and Fig. 4)"),
    "curves": ("rsis.figures.curves", "training curves (validation IoU, loss) of a table's runs"),
    "export": ("rsis.bundle", "write a self-contained model bundle for predict"),
    "predict": ("rsis.predict", "segment your own image from a list of expressions"),
    "download": ("rsis.download", "resumable, checksummed download of dataset files"),
    "bench": ("rsis.bench", "benchmarks that print measured figures"),
}


def add_command(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``, with its help text from ``COMMANDS``."""
    help_text = COMMANDS[name][1]
    return subparsers.add_parser(name, help=help_text, description=help_text)


def _in_range(
    text: str, parse: Callable[[str], Number], inside: Callable[[Number], bool], kind: str
) -> Number:
    """``text`` parsed by ``parse`` where ``inside`` accepts it; otherwise an argparse error
    saying it is not ``kind``."""
    try:
        value = parse(text)
        accepted = inside(value)
    except ValueError:
        accepted = False
    if not accepted:
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    return _in_range(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer of 0 or more (a count that may be zero)."""
    return _in_range(text, int, lambda v: v >= 0, "an integer of 0 or more")


def seed_int(text: str) -> int:
    """argparse type: a random seed, an integer that torch and numpy both take (0 to 2**64 - 1)."""
    return _in_range(text, int, lambda v: 0 <= v < 2**64, f"a seed from 0 to {2**64 - 1}")


def learning_rate(text: str) -> float:
    """argparse type: a learning rate, a number above 0 and at most 1 (nan and inf refused)."""
    return _in_range(text, float, lambda v: 0 < v <= 1, "a learning rate above 0 and at most 1")


def output_file(text: str) -> Path:
    """argparse type: a path to write one file at; a path ending in a separator (a folder) is
    refused, since it would otherwise become a file of the folder's name."""
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(
            f"{text!r} ends with '/', so it names a folder: give a file name in it"
        )
    return Path(text)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Parser with every subcommand listed; only ``command``'s module is imported.

    Args:
        command: the subcommand whose full arguments are needed (None: import all).
    """
    parser = argparse.ArgumentParser(prog="rsis", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, _) in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(module).register(subparsers)
        else:
            add_command(subparsers, name)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The first argument that names a subcommand, if any."""
    return next((arg for arg in argv if arg in COMMANDS), None)


def _path_error(error: OSError) -> str:
    """One line naming the path an ``OSError`` is about, what is wrong and what to do."""
    if error.filename is None:
        return str(error)
    return f"{error.filename}: {error.strerror}; check this path"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse arguments and run the chosen subcommand's ``func``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _chosen_command(argv)
    args = build_parser(command or "").parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except (UserError, IdentityMismatchError) as error:
        print(f"rsis {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"rsis {args.command}: interrupted; no half-written file is left (a training "
            "resumes from its last finished epoch with --resume)",
            file=sys.stderr,
        )
        return 130
    except (
        FileNotFoundError,
        FileExistsError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    ) as error:
        print(f"rsis {args.command}: error: {_path_error(error)}", file=sys.stderr)
        return 2
    logging.getLogger("rsis").info(usage_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
