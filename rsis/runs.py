"""The run specification: one configuration of the ablation grid and what follows from it.

A run is a point of the grid in ``config.yaml: grid``: text embedding, text transform, its
dimension, referent order and batch size (``RunSpec``). Its id names its files
(``mean-pca-64-random-bs32``), it says which reduce output it reads, and its model and
training settings come from the dataset's setting block (``TrainSettings``). The workflow
expands the grid with ``expand_grid`` and hands each run to ``rsis train`` by id; checkpoints
store both, and the tables are laid out from the same grid (``grid_tables``).

This module imports no heavy library: the workflow imports it while it parses.

Adding a coordinate (a seed, say) is one field of ``RunSpec`` plus, when it shows in file
names, one entry of ``ID_PARTS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shlex
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rsis.errors import UserError
from rsis.fields import holds

NATIVE = "native"  # the text model's own embedding size (no reduction)
EMBEDDINGS: tuple[str, ...] = ("pooled", "mean")
TEXT_TRANSFORMS: tuple[str, ...] = ("none", "pca", "linear", "linear_pca")
LEARNED_TRANSFORMS: tuple[str, ...] = ("linear", "linear_pca")
TRAIN_ORDERS: tuple[str, ...] = ("area", "random", "dataset")  # orders a run trains with
PAPER_DECODER = "paper"
# the decoder a run trains: the paper's, or ours with x, y coordinate channels at every scale
DECODERS: tuple[str, ...] = (PAPER_DECODER, "coord")

# (field, how it reads in the id, pattern it matches): joined by "-" into the run id.
ID_PARTS: tuple[tuple[str, str, str], ...] = (
    ("embedding", "{}", r"[a-z]+"),
    ("transform", "{}", r"[a-z_]+"),
    ("dim", "{}", rf"{NATIVE}|\d+"),
    ("order", "{}", r"[a-z]+"),
    ("batch_size", "bs{}", r"\d+"),
)
# a decoder other than the paper's ends the id (``...-bs16-coord``); the paper's adds nothing
_ID_PATTERN = re.compile(
    "-".join(f"{form.format(f'(?P<{name}>{pattern})')}" for name, form, pattern in ID_PARTS)
    + rf"(?:-(?P<decoder>{'|'.join(DECODERS[1:])}))?"
)


def _digits_to_int(value: object) -> object:
    """A coordinate as a run id spells it (``"64"``) as an int; any other value as it is."""
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else value


@dataclass(frozen=True)
class RunSpec:
    """The grid coordinates of one training run.

    Attributes:
        embedding: ``pooled`` or ``mean`` (docs/language.md).
        transform: ``none``, ``pca`` (applied by ``rsis reduce``), ``linear`` or
            ``linear_pca`` (learned by the model).
        dim: ``native`` for ``none``; the PCA size for ``pca``; the learned projection's
            output size for ``linear`` and ``linear_pca``.
        order: referent order while training (``area``, ``random`` or ``dataset``).
        batch_size: images per training batch.
        decoder: ``paper`` (every paper row) or ``coord``, ours: x and y coordinate channels
            join the skip feature at every scale (docs/model.md, "Our decoder variant").
    """

    embedding: str
    transform: str
    dim: int | str
    order: str
    batch_size: int
    decoder: str = PAPER_DECODER

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise UserError(f"run embedding {self.embedding!r}: use one of {EMBEDDINGS}")
        if self.transform not in TEXT_TRANSFORMS:
            raise UserError(f"run transform {self.transform!r}: use one of {TEXT_TRANSFORMS}")
        if self.order not in TRAIN_ORDERS:
            raise UserError(f"run order {self.order!r}: use one of {TRAIN_ORDERS}")
        if self.decoder not in DECODERS:
            raise UserError(f"run decoder {self.decoder!r}: use one of {DECODERS}")
        if (self.transform == "none") != (self.dim == NATIVE):
            raise UserError(
                f"run dim {self.dim!r} with transform {self.transform!r}: transform none "
                f"takes dim {NATIVE!r}, every other transform a positive integer"
            )
        if self.dim != NATIVE and not (holds(self.dim, int) and self.dim > 0):
            raise UserError(f"run dim {self.dim!r} must be {NATIVE!r} or a positive integer")
        if not holds(self.batch_size, int):
            raise UserError(f"run batch size {self.batch_size!r} must be an integer")
        if self.batch_size < 1:
            raise UserError(f"run batch size {self.batch_size} must be at least 1")

    @property
    def id(self) -> str:
        """File-name form, e.g. ``mean-pca-64-random-bs32`` (``...-bs32-coord``)."""
        parts = [form.format(getattr(self, name)) for name, form, _ in ID_PARTS]
        return "-".join(parts + ([self.decoder] if self.decoder != PAPER_DECODER else []))

    @classmethod
    def from_id(cls, run_id: str) -> RunSpec:
        """Parse an id written by ``id``."""
        match = _ID_PATTERN.fullmatch(run_id)
        if match is None:
            raise UserError(
                f"run id {run_id!r} is not of the form "
                "<embedding>-<transform>-<dim>-<order>-bs<batch size>[-<decoder>], "
                "e.g. mean-pca-64-random-bs32 or mean-pca-64-random-bs32-coord"
            )
        coordinates = {name: value for name, value in match.groupdict().items() if value}
        return cls.from_dict(coordinates)

    def to_dict(self) -> dict[str, object]:
        """Plain dict of the coordinates (JSON and checkpoint friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> RunSpec:
        """Build from the coordinates in ``data`` (other keys, such as ``name``, are ignored)."""
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        if not isinstance(data, Mapping):
            raise UserError(f"run description {data!r:.60} is not a mapping of {required}")
        missing = [name for name in required if name not in data]
        if missing:
            raise UserError(f"run description lacks {missing}: it needs {required}")
        values = {f.name: _digits_to_int(data[f.name]) for f in fields if f.name in data}
        return cls(**values)

    @property
    def reduced_by(self) -> str:
        """The transform ``rsis reduce`` applies for this run: ``pca``, or ``none``."""
        return "pca" if self.transform == "pca" else "none"

    @property
    def text_name(self) -> str:
        """The reduce output the run reads, e.g. ``mean~pca~64`` (``mean~none~native``)."""
        dim = self.dim if self.reduced_by == "pca" else NATIVE
        return f"{self.embedding}~{self.reduced_by}~{dim}"

    @property
    def text_file(self) -> str:
        """File name of the reduce output the run reads, e.g. ``mean~pca~64.h5``."""
        return f"{self.text_name}.h5"

    @property
    def pca_file(self) -> str | None:
        """Name of the PCA reduce output that starts a ``linear_pca`` layer (else None)."""
        return f"{self.embedding}~pca~{self.dim}.h5" if self.transform == "linear_pca" else None

    @property
    def proj_dim(self) -> int | None:
        """Output size of the model's learned text projection (None without one)."""
        return int(self.dim) if self.transform in LEARNED_TRANSFORMS else None

    def check_text(self, identity: Mapping[str, object], path: object) -> None:
        """Refuse a reduce output (its ``text_identity``) other than the one this run reads."""
        dim = identity["dim"] if identity["transform"] == "pca" else NATIVE
        found = f"{identity['embedding']}~{identity['transform']}~{dim}"
        if found != self.text_name:
            raise UserError(
                f"{path} holds {found} embeddings, run {self.id} reads {self.text_name}: "
                f"give the reduce output {self.text_file}"
            )


def _setting(
    default: object,
    help_text: str,
    at_least: float | None = None,
    above: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> typing.Any:
    """A setting's field: its default, help text and the range or choices of its values."""
    metadata = {"help": help_text, "at_least": at_least, "above": above, "choices": choices}
    return dataclasses.field(default=default, metadata=metadata)


def _range_error(name: str, value: object, at_least: float | None, above: float | None) -> str:
    """Why ``value`` of setting ``name`` is out of range, or "" when it is in range."""
    finite = not isinstance(value, float) or math.isfinite(value)
    if value is None or (
        finite and (at_least is None or value >= at_least) and (above is None or value > above)
    ):
        return ""
    bound_value = at_least if at_least is not None else above
    kind = "a finite number" if isinstance(bound_value, float) else "an integer"
    bound = f"of at least {at_least:g}" if at_least is not None else f"above {above:g}"
    return f"setting {name} (--{name.replace('_', '-')}) is {value}: give {kind} {bound}"


# The `weights` values that name a start rather than a state_dict file
NAMED_WEIGHTS = ("imagenet", "none")


@dataclass(frozen=True)
class TrainSettings:
    """Model and training settings of a run: a dataset's block in ``config.yaml: settings``.

    Field names are the config keys and, with ``-`` for ``_``, the ``rsis train`` flags.
    """

    backbone: str = _setting("resnet101", "resnet18, resnet34, resnet50 or resnet101")
    weights: str = _setting("imagenet", "encoder start: imagenet, none, or a state_dict file")
    hidden: int = _setting(128, "decoder width H, a multiple of 16", at_least=1)
    lr: float = _setting(1e-4, "decoder and text learning rate", above=0.0)
    encoder_lr: float = _setting(1e-7, "ResNet learning rate (0 freezes it)", at_least=0.0)
    weight_decay: float = _setting(1e-7, "Adam weight decay", at_least=0.0)
    epochs: int = _setting(20, "most epochs", at_least=1)
    steps_per_epoch: int | None = _setting(
        None, "at most this many batches per epoch, for a bounded run (default: all)", at_least=1
    )
    patience: int = _setting(
        5, "early stopping: epochs without a better validation IoU", at_least=1
    )
    min_epochs: int = _setting(
        1, "early stopping ends a run only after this many epochs", at_least=1
    )
    max_referents: int = _setting(6, "longest referent sequence per image", at_least=1)
    seed: int = _setting(0, "seeds initialisation, shuffling and expression choice", at_least=0)
    workers: int = _setting(0, "DataLoader worker processes", at_least=0)
    checkpoint_activations: str = _setting(
        "auto",
        "activation checkpointing with a trainable encoder (less memory, one more forward "
        "pass): auto (on CPU), always or never",
        choices=("auto", "always", "never"),
    )

    # Settings a resumed run may change: they do not alter what was learned so far
    # (checkpointing gives the same gradients and batch-norm statistics).
    RESUMABLE: typing.ClassVar[frozenset[str]] = frozenset(
        {"epochs", "patience", "min_epochs", "workers", "checkpoint_activations"}
    )

    def __post_init__(self) -> None:
        """Refuse an out-of-range value (``--batch-size 0``, ``lr: .nan``) naming the setting."""
        for field in dataclasses.fields(self):
            meta = field.metadata
            error = _range_error(
                field.name, getattr(self, field.name), meta["at_least"], meta["above"]
            )
            if error:
                raise UserError(error)
            value, choices = getattr(self, field.name), meta["choices"]
            if choices and value not in choices:
                flag = f"--{field.name.replace('_', '-')}"
                raise UserError(
                    f"setting {field.name} ({flag}) is {value!r}: give one of {', '.join(choices)}"
                )

    @classmethod
    def from_setting(cls, setting: Mapping[str, object], seed: int) -> TrainSettings:
        """Pick this class's keys from a config setting block; ``seed``: one of ``seeds``."""
        names = {field.name for field in dataclasses.fields(cls)} - {"seed"}
        return cls(seed=seed, **{key: value for key, value in setting.items() if key in names})

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @property
    def weights_file(self) -> Path | None:
        """The state_dict file ``weights`` names; None for a named start (``NAMED_WEIGHTS``)."""
        return None if self.weights in NAMED_WEIGHTS else Path(self.weights)

    def flags(self) -> str:
        """The ``rsis train`` flags that give these settings (for the workflow's rule)."""
        return " ".join(
            f"--{name.replace('_', '-')} {shlex.quote(str(value))}"
            for name, value in self.to_dict().items()
            if value is not None  # unset: the flag's default
        )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per setting, with the default and help text defined above."""
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            kinds = typing.get_args(hints[field.name]) or (hints[field.name],)
            parser.add_argument(
                f"--{field.name.replace('_', '-')}",
                type=kinds[0],  # int for ``int | None``
                default=field.default,
                choices=field.metadata["choices"],
                help=field.metadata["help"]
                + ("" if field.default is None else f" (default {field.default})"),
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainSettings:
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


@dataclass(frozen=True)
class GridTable:
    """One paper table in the grid: its runs, the coordinates that tell its rows apart, and
    the coordinates every row shares."""

    name: str
    fields: tuple[str, ...]
    fixed: dict[str, object]
    runs: tuple[RunSpec, ...]

    def row_key(self, run: RunSpec) -> tuple | None:
        """The row ``run`` fills, or None when the run is not one of this table's."""
        return tuple(getattr(run, field) for field in self.fields) if run in self.runs else None


def _table1(grid: Mapping) -> list[RunSpec]:
    t1 = grid["table1"]
    return [
        RunSpec(embedding, transform, dim, t1["order"], t1["batch_size"])
        for embedding in t1["embeddings"]
        for transform in t1["transforms"]
        for dim in ([NATIVE] if transform == "none" else t1["dims"])
    ]


def _table2(grid: Mapping) -> list[RunSpec]:
    t2 = grid["table2"]
    return [
        RunSpec(t2["embedding"], t2["transform"], t2["dim"], run["order"], run["batch_size"])
        for run in t2["runs"]
    ]


def _extra(grid: Mapping) -> list[RunSpec]:
    return [RunSpec.from_dict(run) for run in grid.get("extra", [])]


def grid_tables(grid: Mapping) -> tuple[GridTable, GridTable]:
    """Table 1 and Table 2 of the configured grid; an extra run joins each table it fits."""
    t1, t2 = grid["table1"], grid["table2"]
    layouts = (
        ("table1", ("embedding", "transform", "dim"), ("order", "batch_size"), t1, _table1(grid)),
        ("table2", ("order", "batch_size"), ("embedding", "transform", "dim"), t2, _table2(grid)),
    )
    tables = []
    for name, fields, shared, block, runs in layouts:
        fixed = {key: block[key] for key in shared}
        fits = [run for run in _extra(grid) if all(getattr(run, k) == v for k, v in fixed.items())]
        rows = tuple(dict.fromkeys(runs + fits))
        if any(run.decoder != PAPER_DECODER for run in rows):  # our decoder: a row field too
            fields = (*fields, "decoder")
        tables.append(GridTable(name, fields, fixed, rows))
    return tables[0], tables[1]


def expand_grid(grid: Mapping) -> dict[str, RunSpec]:
    """Every run of Table 1, Table 2 and the extra rows, each once, by id (in that order)."""
    runs = _table1(grid) + _table2(grid) + _extra(grid)
    return {run.id: run for run in runs}
