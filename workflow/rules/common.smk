# Configuration validation and the helpers every rule file uses.
import json
import os
import re
import shlex
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import best_match
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from rsis.cli import build_parser
from rsis.errors import UserError
from rsis.fields import holds
from rsis.launch import torchrun_arguments
from rsis.runs import (
    EMBEDDINGS,
    NAMED_WEIGHTS,
    NATIVE,
    TrainSettings,
    expand_grid,
    grid_tables,
)


def config_source():
    """Where the configuration came from, for messages: config.yaml, and the --configfile
    files (relative to the working directory when inside it) and --config values Snakemake
    laid over it."""
    here = Path.cwd()
    files = [
        Path(os.path.abspath(path)) for path in workflow.config_settings.configfiles
    ]
    shown = [
        str(path.relative_to(here) if path.is_relative_to(here) else path)
        for path in files
        if path != here / "config.yaml"  # `--configfile config.yaml overlay.yaml`
    ]
    overrides = [f"--configfile {', '.join(shown)}"] if shown else []
    overrides += ["--config"] if workflow.config_settings.config else []
    return f"config.yaml with {' and '.join(overrides)}" if overrides else "config.yaml"


# The first words of every configuration error: the files a bad value may be in.
CONFIG_SOURCE = config_source()


def schema_error(error):
    """One line for a schema violation: the key path and the problem."""
    path = ".".join(str(key) for key in error.absolute_path)
    problem = error.message
    if error.validator == "additionalProperties":  # name the unexpected keys themselves
        known = error.schema.get("properties", {})
        extra = [str(key) for key in error.instance if key not in known]
        path = ", ".join(f"{path}.{key}" if path else key for key in extra)
        # jsonschema: "Additional properties are not allowed ('foo' was unexpected)"
        _, paren, rest = problem.partition("(")
        problem = f"unexpected key {paren}{rest}".rstrip()
    where = f"{path}: " if path else ""
    return f"{CONFIG_SOURCE}: {where}{problem}; see workflow/schemas/config.schema.yaml"


def whole_number_floats(config, schema_file):
    """The first schema violation of ``config`` when an integer must be an int: JSON Schema
    takes 64.0 for an integer, but it would reach a command as ``--hidden 64.0`` or a folder
    ``seed0.0``. None when there is none."""
    schema = yaml.safe_load(Path(schema_file).read_text())
    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer",
        lambda _, value: holds(value, int),
    )
    strict = validators.extend(Draft202012Validator, type_checker=checker)
    return best_match(strict(schema).iter_errors(config))


try:  # also fills in the schema's defaults
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as error:
    if not isinstance(error.__context__, ValidationError):
        raise
    raise ValueError(schema_error(error.__context__)) from None
_float_error = whole_number_floats(
    config, Path(workflow.current_basedir) / "../schemas/config.schema.yaml"
)
if _float_error is not None:
    raise ValueError(schema_error(_float_error))

DATASET = config["dataset"]
if DATASET not in config["datasets"]:
    raise ValueError(
        f"{CONFIG_SOURCE}: dataset {DATASET!r} is not a key of `datasets` "
        f"({', '.join(config['datasets'])}); set `dataset` to one of them"
    )
DS = config["datasets"][DATASET]
if DS["setting"] not in config["settings"]:
    raise ValueError(
        f"{CONFIG_SOURCE}: datasets.{DATASET}.setting {DS['setting']!r} is not a key of `settings`"
    )
SETTING = config["settings"][DS["setting"]]
LANG = {**config["language"], "model": SETTING["text_model"]}
IS_DEMO = DATASET == "demo"
DEMO_ROOT = config["datasets"]["demo"]["root"]
# What `rsis demo --out <root>` writes: <root>/demo/refs(unc).p and instances.json, <root>/images
DEMO_LAYOUT = {"name": "demo", "splitBy": "unc", "images": f"{DEMO_ROOT}/images"}
for _key, _written in DEMO_LAYOUT.items():
    _given = config["datasets"]["demo"][_key]
    if os.path.normpath(str(_given)) != os.path.normpath(_written):
        raise ValueError(
            f"{CONFIG_SOURCE}: datasets.demo.{_key} is {_given!r}, but the generated demo has "
            f"{_written!r} (rsis demo's layout under datasets.demo.root); to train on other "
            "data, add your own entry to `datasets:` and pick it with `dataset:`"
        )
DOWNLOAD = config["download"]["enabled"] and not IS_DEMO
if DOWNLOAD:
    for _key, _archive in (
        (
            f"download.annotations.{DS['name']}",
            config["download"]["annotations"].get(DS["name"]),
        ),
        ("download.images", config["download"].get("images")),
    ):
        if _archive is None:
            raise ValueError(
                f"{CONFIG_SOURCE}: download.enabled is true but {_key} is not set: give its url "
                "(config.yaml has RefCOCO's), or set download.enabled: false and put the files "
                f"under datasets.{DATASET}.root and images yourself"
            )


def result(path):
    """Path of a derived artifact of the configured dataset."""
    return f"results/{DATASET}/{path}"


def log_path(path):
    return f"logs/{DATASET}/{path}.log"


def benchmark_path(path):
    return f"benchmarks/{DATASET}/{path}.tsv"


ENV = "../envs/rsis.yaml"

# A params function that takes `input` or `output` is "deriving": Snakemake leaves its value out
# of the params rerun trigger. The ones here return paths (the input trigger and the output
# paths cover those; weights_arg: see there); a setting reaches a rule as a plain value or a
# function of the wildcards.


def refs_root(wildcards, input):
    """The refer root, from a rule's ``data`` input (the demo folder, or the refs file)."""
    first = Path(input.data[0])
    return str(first if IS_DEMO else first.parent.parent)


def download_flags(archive):
    """``rsis download`` flags for a configured archive (URL, mirrors, checksum)."""
    flags = f"--url {archive['url']}"
    flags += "".join(f" --mirror {mirror}" for mirror in archive.get("mirrors", []))
    if archive.get("sha256"):
        flags += f" --sha256 {archive['sha256']}"
    return flags


def output_dir(wildcards, output):
    """The folder of a rule's first output (commands that write several files there)."""
    return str(Path(output[0]).parent)


def dataset_inputs(wildcards=None):
    """Files the data stage reads: the generated demo folder, or the real refer files.

    For real data, a missing file fails here, naming the path and the config key to set.
    """
    if IS_DEMO:
        return [DEMO_ROOT]
    folder = Path(DS["root"]) / DS["name"]
    files = [folder / f"refs({DS['splitBy']}).p", folder / "instances.json"]
    if DOWNLOAD:
        return [str(f) for f in files] + [DS["images"]]
    checks = [
        (DS["root"], "root"),
        (folder, "name"),
        (files[0], "splitBy"),
        (files[1], "root"),
        (DS["images"], "images"),
    ]
    for path, key in checks:
        if not Path(path).exists():
            raise ValueError(
                f"{path} does not exist: set datasets.{DATASET}.{key} in {CONFIG_SOURCE} "
                "(README.md, 'Reproducing the paper', says where the files come from), or set "
                "download.enabled: true to fetch them"
            )
    return [str(f) for f in files]


# `rsis reduce --fit-split`'s default, which an output without PCA gets (it ignores the flag)
REDUCE_FIT_SPLIT_DEFAULT = "train"


def pca_fit_split(wildcards):
    """``language.fit_split`` for a PCA output (those the ``pca`` and ``linear_pca`` runs
    read), checked here so a bad value names the config key, not a flag. A ``none`` output
    does not use it (`rsis reduce` records ""): it gets the flag's default, so a change of
    the fit split reruns only the PCA outputs and what reads them."""
    if wildcards.transform != "pca":
        return REDUCE_FIT_SPLIT_DEFAULT
    split = LANG["fit_split"]
    if split not in DS["splits"]:
        raise ValueError(
            f"{CONFIG_SOURCE}: language.fit_split {split!r} is not a split of "
            f"datasets.{DATASET}.splits ({', '.join(DS['splits'])}); the PCA is fitted on it"
        )
    return split


try:
    RUNS = expand_grid(config["grid"])
except UserError as error:
    raise ValueError(f"{CONFIG_SOURCE}: grid: {error}") from None
SEEDS = config["seeds"]
# Bad settings are refused when the workflow is parsed, before any job. A training setting the
# block leaves out takes TrainSettings' default (their one owner, not the schema), written
# into the config so that the report states the values the runs use.
try:
    _defaults = TrainSettings.from_setting(SETTING, seed=SEEDS[0]).to_dict()
except UserError as error:
    raise ValueError(f"{CONFIG_SOURCE}: settings.{DS['setting']}: {error}") from None
for _key, _value in _defaults.items():
    if _key != "seed":
        SETTING.setdefault(_key, _value)
TABLES = {table.name: table for table in grid_tables(config["grid"])}
RUN_DIR = "{run}/seed{seed}"  # one folder per run and seed, under train/ and eval/


def train_settings_flags(wildcards):
    """The ``rsis train`` settings flags of one seed of a run."""
    return TrainSettings.from_setting(SETTING, seed=int(wildcards.seed)).flags()


# The image encoder: a state_dict file is an input of the rules that build the model; a frozen
# one (encoder_lr 0) is computed once per split by rule `features` (a random one cannot be
# stored: its batch norms are calibrated on the train split by each run).
WEIGHTS = SETTING["weights"]
WEIGHTS_FILES = [] if WEIGHTS in NAMED_WEIGHTS else [WEIGHTS]
STORED_FEATURES = SETTING["encoder_lr"] == 0 and WEIGHTS != "none"
# The demo's pretrained encoder is built (and probed) only where the setting loads it.
PRETRAINED_DEMO_ENCODER = IS_DEMO and WEIGHTS == result("encoder/pretrained.pt")
if WEIGHTS_FILES and not PRETRAINED_DEMO_ENCODER and not Path(WEIGHTS).is_file():
    raise ValueError(
        f"{CONFIG_SOURCE}: settings.{DS['setting']}.weights {WEIGHTS!r} is neither "
        f"{' nor '.join(NAMED_WEIGHTS)} nor an existing state_dict file: fix the name or the "
        "path"
    )
# The tables only the generated demo has: picture-blind baselines and IoU per expression type.
DEMO_TABLES = (
    [result("tables/baselines.md"), result("tables/expression_types.md")]
    if IS_DEMO
    else []
)


def weights_arg(wildcards, input):
    """``--weights``: the state_dict file among a rule's inputs, or imagenet / none (a
    function of input, so out of the params trigger: a change of `weights` changes the
    rule's inputs, which the input trigger sees)."""
    return input.weights[0] if WEIGHTS_FILES else WEIGHTS


# The demo.* values `rsis demo` reads only at one scale (rsis/data/demo/writer.py): the image
# counts and size at `small`, the share of RefCOCO's counts at `refcoco` (seed and difficulty
# at both).
DEMO_SCALE_KEYS = {
    "small": "train_images val_images testA_images testB_images height width".split(),
    "refcoco": ["fraction"],
}
DEMO_DEFAULTS = vars(build_parser("demo").parse_args(["demo"]))


def demo_plan(key):
    """``demo.<key>`` where the chosen scale reads it; else ``rsis demo``'s default, which
    the command ignores there: a change of a value the dataset does not use reruns nothing
    (it was a param of rule demo_dataset, and so reran everything), and the command of an
    existing dataset stays the same."""
    demo = config["demo"]
    read = key in DEMO_SCALE_KEYS[demo["scale"]]
    return demo[key] if read else DEMO_DEFAULTS[key.lower()]


def demo_scene_flags():
    """The demo generator's picture size and difficulty, as ``rsis demo`` arguments."""
    demo = config["demo"]
    return (
        f"--height {demo['height']} --width {demo['width']}"
        f" --difficulty {demo['difficulty']}"
    )


def features_files(splits):
    """Stored encoder features of ``splits``, or none when the encoder runs live."""
    return (
        [result(f"features/{split}.h5") for split in splits] if STORED_FEATURES else []
    )


def features_flag(option, splits):
    """``option`` followed by the features files of ``splits`` (empty when run live)."""
    files = features_files(splits)
    return f"{option} {' '.join(files)}" if files else ""


def text_file(run):
    """The reduce output a run reads."""
    return result(f"text/{run.text_file}")


def train_inputs(wildcards):
    """Caches and text files one training run needs (refused, naming the split, where the
    dataset has no train or val split: evaluation-only datasets build no training)."""
    for split, use in (("train", "learns on"), ("val", "stops early on")):
        if split not in DS["splits"]:
            raise ValueError(
                f"{CONFIG_SOURCE}: datasets.{DATASET}.splits ({', '.join(DS['splits'])}) has no "
                f"{split} split, which training {use}: add it, or ask only for targets that "
                "need no training"
            )
    run = RUNS[wildcards.run]
    inputs = {
        "train": result("cache/train.h5"),
        "val": result("cache/val.h5"),
        "text": text_file(run),
        "weights": WEIGHTS_FILES,
        "features": features_files(["train", "val"]),
    }
    if run.pca_file:
        inputs["pca"] = result(f"text/{run.pca_file}")
    return inputs


def pca_flag(wildcards, input):
    """``--pca FILE`` for a run whose linear layer starts at PCA."""
    return f"--pca {shlex.quote(input.pca)}" if "pca" in input.keys() else ""


def features_flag_pair(wildcards):
    """``--train-features`` and ``--val-features`` when the frozen encoder's are stored."""
    if not STORED_FEATURES:
        return ""
    train, val = features_files(["train", "val"])
    return f"--train-features {train} --val-features {val}"


# What a heavy job asks for (a local run caps its CPUs at --cores; a cluster profile submits
# these): the top-level `resources` overrides, key by key, the setting's own (its scale: the
# demo's trainings need 2 GB for minutes, the paper's hours), which overrides these defaults.
RESOURCE_DEFAULTS = {"gpu": 0, "cpus": 4, "mem_mb": 16000, "runtime": 720}
RESOURCES = {
    rule_kind: {
        **RESOURCE_DEFAULTS,
        **SETTING.get("resources", {}).get(rule_kind, {}),
        **config["resources"].get(rule_kind, {}),
    }
    for rule_kind in ("train", "evaluate", "embed")
}


def resource_source(rule_kind, key):
    """Where ``RESOURCES[rule_kind][key]`` comes from, for messages: its key in config.yaml."""
    if key in config["resources"].get(rule_kind, {}):
        return f"resources.{rule_kind}.{key}"
    return f"settings.{DS['setting']}.resources.{rule_kind}.{key}"


def per_attempt(rule_kind, key):
    """``resources.<rule_kind>.<key>`` (memory or runtime) at a job's first attempt, twice
    that at its second, and so on: a job a cluster killed for memory or time is resubmitted
    (profiles/slurm: ``retries``) with more, not with what it ran out of."""
    amount = RESOURCES[rule_kind][key]
    return lambda wildcards, attempt: amount * attempt


for rule_name in ("evaluate", "embed"):
    if "processes" in RESOURCES[rule_name]:
        raise ValueError(
            f"{CONFIG_SOURCE}: {resource_source(rule_name, 'processes')}: only `train` runs "
            "several processes"
        )
    if RESOURCES[rule_name]["gpu"] > 1:
        raise ValueError(
            f"{CONFIG_SOURCE}: {resource_source(rule_name, 'gpu')} {RESOURCES[rule_name]['gpu']}: "
            f"{rule_name} runs one process on one GPU; set 0 or 1"
        )


def train_processes():
    """Training processes: ``resources.train.processes``, else one per GPU (1 without)."""
    gpus = RESOURCES["train"]["gpu"]
    processes = RESOURCES["train"].get("processes", max(1, gpus))
    if gpus and processes != gpus:
        raise ValueError(
            f"{CONFIG_SOURCE}: {resource_source('train', 'processes')} {processes} with gpu "
            f"{gpus}: training runs one process per GPU; remove `processes` or make it equal "
            "to `gpu`"
        )
    return processes


TRAIN_PROCESSES = train_processes()
# --device of the jobs that can use a GPU: cuda where the job asks for GPUs, so a GPU job on a
# node whose torch cannot see one fails at once instead of running for hours on its CPUs;
# else auto (a GPU when the machine has one: a local run on a workstation).
DEVICE = {name: "cuda" if needs["gpu"] else "auto" for name, needs in RESOURCES.items()}
# Each training process takes its share of a run's batch (rsis.train), so every batch size
# of the grid must split evenly: refused here rather than in a cluster job hours later.
for run_id, spec in RUNS.items():
    if spec.batch_size % TRAIN_PROCESSES:
        raise ValueError(
            f"{CONFIG_SOURCE}: grid run {run_id} has batch size {spec.batch_size}, which does not "
            f"split over {TRAIN_PROCESSES} training processes (resources.train.gpu or "
            "processes): choose a number that divides every batch size"
        )


def train_launcher(wildcards):
    """``rsis`` in one process; ``torchrun`` with one process per GPU (or per
    ``resources.train.processes`` on CPUs) when there are several."""
    if TRAIN_PROCESSES > 1:
        return shlex.join(["torchrun", *torchrun_arguments(TRAIN_PROCESSES)])
    return "rsis"


def job_cpus(cpus):
    """A rule's ``threads``: ``cpus``, once checked that --cores does not cap it on a cluster.

    Snakemake caps every job's threads at --cores, cluster jobs too: a cluster run under
    profiles/default's `cores: all` would ask for the submitting node's cores instead. The
    check runs when the DAG is built, the first time the executor is known.
    """

    def threads(wildcards):
        cores = workflow.global_resources.get("_cores")
        cluster_run = workflow.is_main_process and workflow.non_local_exec
        capped = cores is not None and cores.value is not None and cores.value < cpus
        if cluster_run and capped:
            raise ValueError(
                f"--cores {cores.value} would shrink cluster jobs that the `resources` of "
                f"{CONFIG_SOURCE} give {cpus} CPUs: run with `--workflow-profile profiles/slurm` "
                "(`--profile` keeps profiles/default and its `cores: all`), or a larger --cores"
            )
        return cpus

    return threads


wildcard_constraints:
    split="train|val|test|testA|testB",
    table="table1|table2",
    run="|".join(re.escape(run) for run in RUNS),
    seed=r"\d+",


EVAL_SPLITS = [split for split in DS["splits"] if split != "train"]
if not EVAL_SPLITS:
    raise ValueError(
        f"{CONFIG_SOURCE}: datasets.{DATASET}.splits has no split but train: the tables score "
        "the runs on every other split; add val or a test split"
    )
KNOWN_SPLITS = {split for ds in config["datasets"].values() for split in ds["splits"]}
for split in config["figures"]["splits"]:
    if split not in KNOWN_SPLITS - {"train"}:
        raise ValueError(
            f"{CONFIG_SOURCE}: figures.splits {split!r} is no evaluated split of any dataset "
            f"({', '.join(sorted(KNOWN_SPLITS - {'train'}))}): fix its name"
        )
# a split the chosen dataset lacks (testA for RefCOCOg) is skipped: switching datasets needs
# no edit here
FIGURE_SPLITS = [s for s in config["figures"]["splits"] if s in EVAL_SPLITS]
FIGURE_RUN = config["figures"]["run"]
if FIGURE_RUN not in RUNS:
    raise ValueError(
        f"{CONFIG_SOURCE}: figures.run {FIGURE_RUN!r} is not a configuration of the grid; "
        f"choose one of {', '.join(RUNS)}"
    )
if config["figures"]["seed"] not in SEEDS:
    raise ValueError(
        f"{CONFIG_SOURCE}: figures.seed {config['figures']['seed']} is not one of seeds {SEEDS}"
    )
FIGURE_DIR = RUN_DIR.format(run=FIGURE_RUN, seed=config["figures"]["seed"])
DATASET_LABEL = DS.get("label", DATASET)


# The expression whose metrics fill the tables: the protocol's sentences (the first for rsis,
# every sentence for the peers' protocols), evaluated whether or not `expressions` lists it.
TABLE_EXPRESSION = "first" if config["evaluation"]["protocol"] == "rsis" else "all"
EVAL_EXPRESSIONS = list(
    dict.fromkeys([*config["evaluation"]["expressions"], TABLE_EXPRESSION])
)


def curve_runs(wildcards):
    """``rsis curves`` arguments of one table: ``--run <run id> <metrics.csv>`` per run and
    seed (a repeated id is drawn as the mean over its seeds with a band)."""
    ids = [run.id for run in TABLES[wildcards.table].runs]
    paths = [
        (i, result(f"train/{i}/seed{seed}/metrics.csv")) for i in ids for seed in SEEDS
    ]
    return " ".join(f"--run {i} {path}" for i, path in paths)


def all_outputs():
    """Everything `snakemake` builds by default."""
    return [
        result("tables/table1.md"),
        result("tables/table2.md"),
        result("tables/convergence.md"),
        result("findings.md"),
        result("summary.md"),
        *DEMO_TABLES,
        *expand(result("figures/curves_{table}.png"), table=["table1", "table2"]),
        *expand(
            result("figures/{kind}_{split}.png"),
            kind=["qualitative", "inverse_order"],
            split=FIGURE_SPLITS,
        ),
        *([result("encoder/probe.json")] if PRETRAINED_DEMO_ENCODER else []),
    ]
