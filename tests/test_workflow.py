"""The Snakemake workflow: DAG shape, cluster profile, and rerun semantics on a tiny config."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from snakemake.utils import update_config

from rsis.findings import AGREES, DISAGREES, UNRESOLVED
from rsis.runs import TrainSettings

REPO = Path(__file__).resolve().parents[1]

TINY = REPO / "tests/tiny_workflow.yaml"  # also used by .ci/slurm


def _snakemake(workdir: Path, *args: str) -> str:
    result = subprocess.run(
        ["snakemake", "--cores", "2", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def job_counts(output: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table (empty when there is nothing to do)."""
    if "Job stats" not in output:
        return {}
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {
        m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"
    }


def test_dag_trains_every_configuration_once():
    # --forceall: count the whole DAG even where a developer's results/ already exist
    counts = job_counts(_snakemake(REPO, "-n", "--forceall"))
    # 16 runs of Tables 1 and 2, shared ones once, + linear_pca; each once per seed (3)
    assert counts["train"] == 17 * 3
    assert counts["evaluate"] == 17 * 3
    assert counts["tables"] == 1


def test_slurm_profile_dry_run():
    output = _snakemake(REPO, "--workflow-profile", "profiles/slurm", "-n", "--forceall")
    assert job_counts(output)["train"] == 17 * 3
    # a retried, requeued or rerun train job continues from the run's last.pt
    train = output.split("rule train:")[1].split("rule ")[0]
    assert " --resume auto" in train and "last.pt" not in train


def _partition_for(gpu: int) -> str:
    """The partition the slurm plugin picks, from profiles/slurm/partitions.yaml, for a
    training job of config.yaml's resources asking for ``gpu`` GPUs."""
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    partitions = read_partition_file(REPO / "profiles/slurm/partitions.yaml")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    train = config["settings"]["paper"]["resources"]["train"]  # the heaviest training
    resources = {"gpu": gpu, "mem_mb": train["mem_mb"], "runtime": train["runtime"]}
    job = SimpleNamespace(name="train", threads=train["cpus"], resources=resources)
    logger = SimpleNamespace(info=print, warning=print, debug=print)
    return get_best_partition(partitions, job, logger)


def test_slurm_profile_sends_only_gpu_jobs_to_the_gpu_partition():
    # before: train, evaluate and embed went to <GPU_PARTITION> even at `gpu: 0`
    assert _partition_for(gpu=0) == "<PARTITION>"
    assert _partition_for(gpu=1) == "<GPU_PARTITION>"
    assert _partition_for(gpu=4) == "<GPU_PARTITION>"


def _dry_run_with_resources(
    tmp_path: Path, resources: dict, **config: object
) -> subprocess.CompletedProcess:
    """``snakemake -n`` of the whole grid with ``resources`` (and any other top-level
    ``config`` keys) laid over config.yaml."""
    overlay = _overlay(tmp_path)
    overlay.write_text(yaml.safe_dump({"resources": resources, **config}))
    command = ["snakemake", "--cores", "2", "-n", "--forceall", "-p"]
    command += ["--configfile", "config.yaml", str(overlay)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def _overlay(tmp_path: Path) -> Path:
    """The --configfile that ``_dry_run_with_resources`` lays over config.yaml."""
    return tmp_path / "resources.yaml"


def _overlay_source(tmp_path: Path) -> str:
    """How the workflow's messages name the configuration of ``_dry_run_with_resources``
    (config.yaml, given again, is left out; the overlay, outside the working directory, is
    named by its absolute path)."""
    return f"config.yaml with --configfile {_overlay(tmp_path)}"


def test_missing_real_data_names_the_key_and_where_it_is_set(tmp_path):
    root = tmp_path / "nowhere"
    result = _dry_run_with_resources(
        tmp_path, {}, dataset="refcoco", datasets={"refcoco": {"root": str(root)}}
    )
    assert result.returncode != 0
    assert (
        f"{root} does not exist: set datasets.refcoco.root in {_overlay_source(tmp_path)} "
        "(README.md, 'Reproducing the paper', says where the files come from), or set "
        "download.enabled: true to fetch them" in result.stdout + result.stderr
    )


def test_train_asks_its_processes_cpus_and_each_computes_with_its_share(tmp_path):
    result = _dry_run_with_resources(tmp_path, {"train": {"processes": 2, "cpus": 1}})
    assert result.returncode == 0, result.stderr[-3000:]
    train = result.stdout.split("rule train:")[1].split("rule ")[0]
    assert "threads: 2" in train  # 2 processes x 1 CPU: what a cluster job asks for
    assert "torchrun --standalone --nproc-per-node=2 --log-dir /dev/null -m rsis.cli train" in train
    assert "--cpus 2" in train


def test_features_ask_for_what_an_evaluation_asks(tmp_path):
    resources = {"evaluate": {"cpus": 2, "mem_mb": 1234, "runtime": 17}}
    result = _dry_run_with_resources(tmp_path, resources)
    assert result.returncode == 0, result.stderr[-3000:]
    features = result.stdout.split("rule features:")[1].split("rule ")[0]
    assert "threads: 2" in features and "--threads 2" in features
    assert "mem_mb=1234" in features and "runtime=17" in features


def _job(dry_run: str, rule: str) -> str:
    """The first ``rule`` job of a ``snakemake -n -p`` output."""
    return dry_run.split(f"rule {rule}:")[1].split("rule ")[0]


def test_a_setting_sizes_its_jobs_and_top_level_resources_override_it(tmp_path):
    # settings.demo.resources: the demo's jobs ask for minutes and a few GB, not the paper's
    # 12 hours and 16 GB (before: every setting's jobs asked for the top-level numbers)
    result = _dry_run_with_resources(tmp_path, {})
    assert result.returncode == 0, result.stderr[-3000:]
    train, evaluate = _job(result.stdout, "train"), _job(result.stdout, "evaluate")
    assert "--cpus 1 " in train
    assert "mem_mb=4000" in train and "runtime=30" in train
    assert "mem_mb=3000" in evaluate and "runtime=10" in evaluate
    # a key of the top-level `resources` wins over the setting's; the others stay the setting's
    result = _dry_run_with_resources(tmp_path, {"train": {"cpus": 2, "mem_mb": 1234}})
    assert result.returncode == 0, result.stderr[-3000:]
    train = _job(result.stdout, "train")
    assert "threads: 2" in train and "--cpus 2 " in train
    assert "mem_mb=1234" in train and "runtime=30" in train
    # a setting's own numbers are read from its block
    demo = {"resources": {"train": {"runtime": 77}}}
    result = _dry_run_with_resources(tmp_path, {}, settings={"demo": demo})
    assert result.returncode == 0, result.stderr[-3000:]
    train = _job(result.stdout, "train")
    assert "runtime=77" in train and "mem_mb=4000" in train


def test_a_bad_resource_names_the_key_it_came_from(tmp_path):
    demo = {"resources": {"evaluate": {"gpu": 2}}}
    result = _dry_run_with_resources(tmp_path, {"evaluate": {}}, settings={"demo": demo})
    assert result.returncode != 0
    assert (
        f"{_overlay_source(tmp_path)}: settings.demo.resources.evaluate.gpu 2: evaluate runs "
        "one process on one GPU" in (result.stdout + result.stderr)
    )


def test_jobs_that_ask_for_a_gpu_insist_on_one(tmp_path):
    # gpu 0: auto (a workstation's GPU if it has one); gpu 1: cuda, so a GPU job whose torch
    # sees no GPU fails at once instead of training on the node's CPUs for hours
    result = _dry_run_with_resources(tmp_path, {"train": {"gpu": 1}, "embed": {"gpu": 1}})
    assert result.returncode == 0, result.stderr[-2000:]
    commands = {
        rule: result.stdout.split(f"rule {rule}:")[1].split("rule ")[0]
        for rule in ("train", "evaluate", "evaluate_inverse_order", "features", "embed")
    }
    for rule, command in commands.items():
        device = "cuda" if rule in ("train", "embed") else "auto"
        assert f" --device {device} " in command, (rule, command)


def test_train_processes_other_than_one_per_gpu_are_refused(tmp_path):
    result = _dry_run_with_resources(tmp_path, {"train": {"gpu": 1, "processes": 2}})
    assert result.returncode != 0
    assert "resources.train.processes 2 with gpu 1" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (
            {"train": {"processes": 3}},
            "grid run pooled-none-native-random-bs32 has batch size 32, which does "
            "not split over 3 training processes",
        ),
        (
            {"evaluate": {"gpu": 2}},
            "resources.evaluate.gpu 2: evaluate runs one process on one GPU; set 0 or 1",
        ),
    ],
    ids=["batch-over-processes", "evaluate-gpus"],
)
def test_resources_the_jobs_cannot_use_are_refused(tmp_path, resources, message):
    result = _dry_run_with_resources(tmp_path, resources)
    assert result.returncode != 0
    assert f"{_overlay_source(tmp_path)}: {message}" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"figures": {"splits": ["testa"]}},
            "figures.splits 'testa' is no evaluated split of any dataset "
            "(test, testA, testB, val): fix its name",
        ),
        (
            {"datasets": {"demo": {"splits": ["train"]}}},
            "datasets.demo.splits has no split but train",
        ),
        (
            {"datasets": {"demo": {"splits": ["train", "testA", "testB"]}}},
            "datasets.demo.splits (train, testA, testB) has no val split, "
            "which training stops early on",
        ),
        (
            {
                "datasets": {"demo": {"splits": ["val", "testA", "testB"]}},
                "language": {"fit_split": "val"},
            },
            "datasets.demo.splits (val, testA, testB) has no train split, "
            "which training learns on",
        ),
        (
            {"datasets": {"demo": {"splitBy": "umd"}}},
            "datasets.demo.splitBy is 'umd', but the generated demo has 'unc'",
        ),
        (
            {"grid": {"extra": [{"embedding": "mean", "transform": "none", "dim": 64,
                                 "order": "random", "batch_size": 16}]}},
            "grid: run dim 64 with transform 'none': transform none takes dim "
            "'native', every other transform a positive integer",
        ),
        (
            {"settings": {"demo": {"lr": float("nan")}}},
            "settings.demo: setting lr (--lr) is nan: give a finite number above 0",
        ),
        (
            {"dataset": "refcoco_sample", "datasets": {"refcoco_sample": {"name": "mine"}},
             "download": {"enabled": True}},
            "download.enabled is true but download.annotations.mine is not set",
        ),
        (
            {"grid": {"table2": {"runs": []}}},
            "grid.table2.runs: [] should be non-empty",
        ),
        (
            {"evaluation": {"expressions": []}},
            "evaluation.expressions: [] should be non-empty",
        ),
        (
            {"datasets": {"demo": {"splits": ["train", "val", "val", "testA"]}}},
            "datasets.demo.splits: ['train', 'val', 'val', 'testA'] has non-unique "
            "elements",
        ),
        (
            {"seeds": [0.0, 1, 2]},  # JSON Schema's integer; the folder would be seed0.0
            "seeds.0: 0.0 is not of type 'integer'",
        ),
        (
            {"settings": {"demo": {"hidden": 64.0}}},  # rsis train --hidden 64.0 fails
            "settings.demo.hidden: 64.0 is not of type 'integer'",
        ),
        (
            {"settings": {"demo": {"weights": "ImageNet"}}},
            "settings.demo.weights 'ImageNet' is neither imagenet nor none nor an "
            "existing state_dict file: fix the name or the path",
        ),
        (
            {"evaluation": {"seed": -1}},  # rsis evaluate --seed refuses it inside the job
            "evaluation.seed: -1 is less than the minimum of 0",
        ),
        (
            {"download": {"images": {"url": "coco.zip"}}},  # rsis download --url refuses it
            "download.images.url: 'coco.zip' does not match '^(https?|ftp|file)://'",
        ),
    ],
    ids=["figure-split", "no-eval-split", "no-val", "no-train", "demo-layout", "grid-run",
         "setting-value", "no-download-url", "empty-table", "no-expressions", "repeated-split",
         "float-seed", "float-hidden", "weights-name", "negative-seed", "bad-url"],
)  # fmt: skip
def test_config_that_cannot_finish_is_refused(tmp_path, config, message):
    result = _dry_run_with_resources(tmp_path, {}, **config)
    assert result.returncode != 0
    assert f"{_overlay_source(tmp_path)}: {message}" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("config", "where"),
    [({"foo": 1}, "foo"), ({"settings": {"demo": {"epoch": 3}}}, "settings.demo.epoch")],
)
def test_schema_error_is_one_line_naming_the_key(tmp_path, config, where):
    result = _dry_run_with_resources(tmp_path, {}, **config)
    assert result.returncode != 0
    key = where.split(".")[-1]
    line = (
        f"{_overlay_source(tmp_path)}: {where}: unexpected key ('{key}' was unexpected); "
        "see workflow/schemas/config.schema.yaml"
    )
    output = result.stdout + result.stderr
    assert line in output.splitlines()
    assert "$schema" not in output  # not the whole schema and config


def test_the_demo_is_generated_where_its_dataset_entry_says(tmp_path):
    demo = {"root": "data/mydemo", "images": "data/mydemo/images"}
    result = _dry_run_with_resources(tmp_path, {}, datasets={"demo": demo})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rsis demo --out data/mydemo " in result.stdout
    assert "rsis prepare --refs-root data/mydemo --dataset demo" in result.stdout


def test_a_decoder_width_the_model_cannot_build_is_refused_before_any_job(tmp_path):
    result = _dry_run_with_resources(tmp_path, {}, settings={"demo": {"hidden": 24}})
    assert result.returncode != 0
    line = (
        f"{_overlay_source(tmp_path)}: settings.demo.hidden: 24 is not a multiple of 16; "
        "see workflow/schemas/config.schema.yaml"
    )
    assert line in (result.stdout + result.stderr).splitlines()


def test_a_setting_left_out_takes_rsis_trains_default(tmp_path):
    """TrainSettings owns the training settings' defaults: the schema adds none of its own
    (it gave epochs 100, patience 10, workers 4 where `rsis train` gives 20, 5, 0)."""
    for name in ("Snakefile", "workflow"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for key in ("epochs", "patience", "workers", "hidden"):
        del config["settings"]["demo"][key]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = ["snakemake", "--cores", "2", "-n", "-p", "--forceall"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    train = result.stdout.split("rule train:")[1].split("rule ")[0]
    defaults = TrainSettings()
    for key in ("epochs", "patience", "workers", "hidden"):
        assert f"--{key} {getattr(defaults, key)} " in train, key


def _tiny_copy(workdir: Path, **overlay: object) -> Path:
    """A copy of the workflow in ``workdir`` with the tiny demo config, and ``overlay`` (top
    level config keys) laid over it."""
    for name in ("Snakefile", "workflow", "profiles"):
        source = REPO / name
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, workdir / name)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, yaml.safe_load(TINY.read_text()))  # how --configfile merges
    update_config(config, overlay)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


# A bad value, and the message that names it after the source
FLOAT_HIDDEN = {"settings": {"demo": {"hidden": 64.0}}}
HIDDEN_FLOAT = "settings.demo.hidden: 64.0 is not of type 'integer'"
SCHEMA_HINT = "; see workflow/schemas/config.schema.yaml"


@pytest.mark.parametrize(
    ("in_config", "overlay", "args", "line"),
    [
        (FLOAT_HIDDEN, None, [], f"config.yaml: {HIDDEN_FLOAT}"),
        (
            {},
            FLOAT_HIDDEN,
            ["--configfile", "mine.yaml"],
            f"config.yaml with --configfile mine.yaml: {HIDDEN_FLOAT}",
        ),
        (
            {},
            None,
            ["--config", "foo=1"],
            "config.yaml with --config: foo: unexpected key ('foo' was unexpected)",
        ),
        (
            {},
            FLOAT_HIDDEN,
            ["--configfile", "config.yaml", "mine.yaml", "--config", "dataset=demo"],
            f"config.yaml with --configfile mine.yaml and --config: {HIDDEN_FLOAT}",
        ),
    ],
    ids=["config.yaml", "configfile", "config", "both"],
)
def test_a_config_error_names_its_source(tmp_path, in_config, overlay, args, line):
    # before: every message began `config.yaml:`, where a --configfile or --config value
    # the user laid over it is not
    workdir = _tiny_copy(tmp_path, **in_config)
    if overlay is not None:
        (workdir / "mine.yaml").write_text(yaml.safe_dump(overlay))
    command = ["snakemake", "--cores", "1", "-n", *args]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert line + SCHEMA_HINT in (result.stdout + result.stderr).splitlines()


@pytest.fixture(scope="module")
def tiny_workflow(tmp_path_factory):
    """A copy of the workflow with a tiny demo config, run once to the end."""
    workdir = _tiny_copy(tmp_path_factory.mktemp("workflow"))
    _snakemake(workdir)
    return workdir


def _edit_config(workdir: Path, edit) -> None:
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config))


def _counts_after_edit(workdir: Path, edit, *targets: str) -> dict[str, int]:
    """The jobs ``snakemake -n`` (of ``targets``, else the default target) would run once
    ``edit`` is applied to the config; the config is restored afterwards."""
    original = (workdir / "config.yaml").read_text()
    _edit_config(workdir, edit)
    try:
        return job_counts(_snakemake(workdir, "-n", *targets))
    finally:
        (workdir / "config.yaml").write_text(original)


@pytest.mark.slow
def test_tiny_run_produces_tables_and_figures(tiny_workflow):
    tables = tiny_workflow / "results/demo/tables"
    assert "Instance IoU" in (tables / "table1.md").read_text()
    figures = tiny_workflow / "results/demo/figures"
    for name in ("qualitative_testA", "inverse_order_testA", "curves_table1", "curves_table2"):
        with Image.open(figures / f"{name}.png") as png:
            assert png.height >= 240
    convergence = (tables / "convergence.md").read_text()
    assert "4 of 4 runs hit the epoch cap" in convergence  # 1 epoch, patience 1: capped
    assert convergence.count("| 1 of 1       | 1          |") == 4
    baselines = (tables / "baselines.md").read_text()
    for name in ("every object", "named colour", "named colour and shape"):
        assert f"| {name} " in baselines
    for run in ("mean-pca-8-random-bs4", "mean-pca-8-area-bs4"):  # two seeds: two runs each
        for seed in (0, 1):
            assert (tiny_workflow / f"results/demo/train/{run}/seed{seed}/best.pt").exists()
    table = pd.read_csv(tables / "table2.csv")
    assert (table["instance_iou_val_n"] == 2).all()
    assert (table["instance_iou_val_sd"] > 0).all()  # the seeds differ: the cells have a spread
    for _, cell in table.iterrows():  # each cell: mean and sd of its seeds' evaluations
        run = f"mean-pca-8-{cell['order']}-bs{cell['batch_size']}"
        scores = [
            100 * json.loads(path.read_text())["metrics"]["instance_iou"]
            for path in sorted(
                (tiny_workflow / "results/demo/eval" / run).glob("seed*/val~first.json")
            )
        ]
        assert len(scores) == 2
        assert cell["instance_iou_val_mean"] == pytest.approx(np.mean(scores), abs=0.006)
        assert cell["instance_iou_val_sd"] == pytest.approx(np.std(scores, ddof=1), abs=0.006)
    assert " ± " in (tables / "table2.md").read_text()
    findings = (tiny_workflow / "results/demo/findings.md").read_text()
    rows = [line for line in findings.splitlines() if line.startswith("| ") and "Claim" not in line]
    assert len(rows) == 9  # every claim, each with a verdict
    assert all(any(v in row for v in (AGREES, DISAGREES, UNRESOLVED)) for row in rows)
    assert "Seeds: 0, 1." in findings
    summary = (tiny_workflow / "results/demo/summary.md").read_text()
    assert "#### The paper's claims, checked on our runs" in summary and "Table 1" in summary
    types = pd.read_csv(tables / "expression_types.csv")
    assert set(types["run"]) == {"mean-pca-8-random-bs4", "mean-pca-8-area-bs4"}
    assert (types["instance_iou_testA_n"] == 2).all()  # both seeds, per expression type
    assert "#### Results per expression type" in summary
    assert job_counts(_snakemake(tiny_workflow, "-n")) == {}


@pytest.mark.slow
def test_tiny_run_pretrains_the_encoder_and_stores_features_once(tiny_workflow):
    results = tiny_workflow / "results/demo"
    state = torch.load(results / "encoder/pretrained.pt", weights_only=True)
    assert "layer4.1.bn2.running_var" in state
    probe = json.loads((results / "encoder/probe.json").read_text())
    assert set(probe["accuracy"]) == {"pretrained", "random"}
    for split in ("train", "val", "testA", "testB"):
        with h5py.File(results / f"features/{split}.h5") as f:
            assert f["layer1"].dtype == np.float16
    for seed in (0, 1):
        log = tiny_workflow / f"logs/demo/train/mean-pca-8-random-bs4/seed{seed}.log"
        assert "stored encoder features" in log.read_text()
    counts = _counts_after_edit(tiny_workflow, lambda c: c["pretrain"].update(epochs=2))
    assert counts["pretrain_encoder"] == 1 and counts["features"] == 4
    assert counts["train"] == 4 and "prepare" not in counts  # 2 runs x 2 seeds


@pytest.mark.slow
def test_changing_a_training_value_reruns_training_and_what_follows(tiny_workflow):
    counts = _counts_after_edit(tiny_workflow, lambda c: c["settings"]["demo"].update(lr=2e-4))
    assert counts == {
        "train": 4,
        "evaluate": 4,
        "evaluate_inverse_order": 1,
        "tables": 1,
        "convergence": 1,
        "findings": 1,
        "expression_types": 1,
        "summary": 1,
        "figures": 1,
        "curves": 2,
        "all": 1,
    }


@pytest.mark.slow
def test_changing_one_run_reruns_only_that_run(tiny_workflow):
    counts = _counts_after_edit(
        tiny_workflow, lambda c: c["grid"]["table2"]["runs"][1].update(batch_size=2)
    )
    assert counts == {
        "train": 2,
        "evaluate": 2,
        "tables": 1,
        "convergence": 1,
        "findings": 1,
        "expression_types": 1,
        "summary": 1,
        "curves": 1,
        "all": 1,
    }


@pytest.mark.slow
def test_changing_the_pca_dim_reruns_reduce_and_what_follows(tiny_workflow):
    def edit(config):
        config["grid"]["table1"]["dims"] = [4]
        config["grid"]["table2"]["dim"] = 4
        config["figures"]["run"] = "mean-pca-4-random-bs4"

    counts = _counts_after_edit(tiny_workflow, edit)
    assert counts["reduce"] == 1 and counts["train"] == 4
    assert "tokenize" not in counts and "embed" not in counts and "prepare" not in counts


@pytest.mark.slow
def test_changing_the_scoring_resolution_reruns_the_evaluations_and_what_follows(tiny_workflow):
    # before: --original-size reached `rsis evaluate` through a params function of `input`,
    # which Snakemake's params trigger skips: the evaluations kept their old masks' scores
    counts = _counts_after_edit(tiny_workflow, lambda c: c["evaluation"].update(original_size=True))
    assert counts == {
        "evaluate": 4,
        "tables": 1,
        "findings": 1,
        "expression_types": 1,
        "summary": 1,
        "figures": 1,
        "all": 1,
    }


@pytest.mark.slow
def test_changing_the_fit_split_reruns_only_the_pca_outputs(tmp_path):
    # before: every reduce output took language.fit_split as a param, the unreduced ones too
    # (rsis reduce ignores it there), so a change retrained the runs that read no PCA as well
    workdir = _tiny_copy(tmp_path)
    unreduced, pca = "results/demo/text/mean~none~native.h5", "results/demo/text/mean~pca~8.h5"
    _snakemake(workdir, unreduced, pca)

    def edit(config):
        config["language"]["fit_split"] = "val"

    assert _counts_after_edit(workdir, edit, unreduced) == {}
    assert _counts_after_edit(workdir, edit, pca) == {"reduce": 1}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scale", "ignored", "used"),
    [
        ("small", {"fraction": 0.5}, {"train_images": 9}),
        (
            "refcoco",
            {"train_images": 9, "testB_images": 5, "height": 96, "width": 96},
            {"fraction": 0.001},
        ),
    ],
)
def test_a_demo_setting_its_scale_ignores_reruns_nothing(tmp_path, scale, ignored, used):
    # before: every demo.* value was a param of demo_dataset at either scale, so changing
    # demo.fraction at scale small (or an image count at refcoco) rebuilt the dataset that
    # every other job reads
    workdir = _tiny_copy(tmp_path, demo={"scale": scale, "fraction": 0.0005})
    _snakemake(workdir, "resources/demo")
    counts = _counts_after_edit(workdir, lambda c: c["demo"].update(ignored), "resources/demo")
    assert counts == {}
    counts = _counts_after_edit(workdir, lambda c: c["demo"].update(used), "resources/demo")
    assert counts == {"demo_dataset": 1}  # what the scale uses still reruns it


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _chromium(*args: str) -> str:
    """Run headless Chromium (Debian's ``chromium``; .ci/run installs it) and return stdout."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: apt-get install -y chromium (as .ci/run does)")
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    result = subprocess.run(
        [*command, "--virtual-time-budget=10000", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_report_renders_in_a_browser(tiny_workflow):
    """The report opens in headless Chromium with its landing page, tables, curves and figures.

    Set RSIS_SCREENSHOTS to a folder (e.g. docs/images) to keep the screenshots there.
    """
    report = tiny_workflow / "report.html"
    _snakemake(tiny_workflow, "--report", str(report))
    dom = _chromium("--dump-dom", report.as_uri())
    assert '<div id="app"><div' in dom  # the report's app ran and drew the page
    assert "paper ablations on demo (generated shapes)" in dom  # landing page, from config
    assert "once per seed (0, 1), the figures showing seed 1." in dom
    assert "true positives" in dom and "What to look at" in dom
    for category in ("Summary", "Tables", "Training curves", "Figures"):
        assert f"<span>{category}</span>" in dom  # in the menu
    for result in ("summary.html", "table1.html", "table2.html", "curves_table1.png",
                   "qualitative_testA.png", "inverse_order_testA.png"):  # fmt: skip
        assert f"filename={result};base64," in dom  # embedded in the report
    folder = Path(os.environ.get("RSIS_SCREENSHOTS") or tiny_workflow)
    folder.mkdir(parents=True, exist_ok=True)
    shots = {
        "report_landing.png": report.as_uri(),
        "report_table2.png": (tiny_workflow / "results/demo/tables/table2.html").as_uri(),
    }
    for name, uri in shots.items():
        _chromium(f"--screenshot={folder / name}", "--window-size=1280,1500", uri)
        with Image.open(folder / name) as png:
            assert png.size == (1280, 1500)
            assert np.unique(np.asarray(png.convert("L"))).size > 8  # something was drawn


@pytest.mark.slow
def test_protocol_switch_renders_the_tables_under_lavt(tiny_workflow):
    """Last in this file: it runs the workflow under another protocol (no later test reads
    the results)."""
    original = (tiny_workflow / "config.yaml").read_text()
    _edit_config(tiny_workflow, lambda c: c["evaluation"].update(protocol="lavt"))
    try:
        counts = job_counts(_snakemake(tiny_workflow, "-n"))
        assert counts["evaluate"] == 4  # 2 runs x 2 seeds
        assert counts["tables"] == 1 and "train" not in counts
        _snakemake(tiny_workflow)
        # lavt and cris score the same sentences (the same files): only the params trigger
        # sees the change, which it missed while the protocol came through a function of input
        _edit_config(tiny_workflow, lambda c: c["evaluation"].update(protocol="cris"))
        counts = job_counts(_snakemake(tiny_workflow, "-n"))
        assert counts["evaluate"] == 4 and "train" not in counts
    finally:
        (tiny_workflow / "config.yaml").write_text(original)
    caption = (tiny_workflow / "results/demo/tables/table1.md").read_text()
    assert "protocol lavt" in caption and "every sentence scored" in caption
    record = json.loads(
        (tiny_workflow / "results/demo/eval/mean-pca-8-random-bs4/seed0/val~all.json").read_text()
    )
    assert record["protocol"] == "lavt" and record["conventions"]["resolution"].startswith(
        "480x480"
    )
    assert record["metrics"]["n_samples"] > record["metrics"]["n_referents"]
    assert set(record["breakdowns"]) == {"category", "expression_type"}
