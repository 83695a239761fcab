"""Bad files given to score, tables, findings, types, convergence and curves end in one line
(exit code 2) naming the file, the field or entry and what to give; a command that writes
several files leaves none of them when it fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rsis.cli import main
from rsis.io import write_texts
from rsis.metrics import CONVENTIONS, write_metrics_json
from rsis.score import encode_rle, write_predictions_json
from tests.helpers import SAMPLE_ROOT

CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"
RUN = {"embedding": "mean", "transform": "pca", "dim": 64, "order": "random", "batch_size": 32}
DAMAGED = (
    "the instances file is damaged or not COCO: download it again (README, step 1), or for "
    "the generated demo run rsis demo again"
)
NOT_UTF8 = b"\xff\xfe not text"
METRICS = {"overall_iou": 0.4, "instance_iou": 0.4, "n_referents": 10, "n_samples": 10} | {
    f"prec@{x}": 0.5 for x in (0.5, 0.6, 0.7, 0.8, 0.9)
}


def error_line(capsys) -> str:
    """The command's one error line (a progress bar may precede it; nothing may follow it)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line for line in lines if line.startswith("rsis ")] == lines[-1:], lines
    return lines[-1]


def score_argv(predictions: Path, out: Path | str, root: Path = SAMPLE_ROOT) -> list[str]:
    return ["score", "--refs-root", str(root), "--dataset", "refcoco", "--split", "val",
            "--predictions", str(predictions), "--out", str(out)]  # fmt: skip


def write_val_predictions(refer, path: Path) -> list[dict]:
    """The ground truth of every val sentence as ``rsis score``'s input; returns the entries."""
    samples = [
        (sent_id, ref["ref_id"], encode_rle(refer.decode_mask(ref["ann_id"])))
        for ref in refer.refs_in_split("val")
        for sent_id in ref["sent_ids"]
    ]
    write_predictions_json(path, samples)
    return json.loads(path.read_text())


def metrics_file(folder: Path, name: str = "val~first.json", **changes: object) -> Path:
    """A metrics file of run ``RUN`` seed 0 on val; ``changes`` replace top-level fields."""
    path = folder / name
    summary = {"protocol": "rsis", "metrics": METRICS, "conventions": CONVENTIONS}
    record = write_metrics_json(
        path, summary, run={**RUN, "seed": 0}, split="val", expression="first",
        dataset="refcoco", text_model="all-MiniLM-L6-v2", backbone="resnet101",
        image_size=(240, 427),
    )  # fmt: skip
    path.write_text(json.dumps(record | changes))
    return path


def test_an_uncompressed_rle_that_fits_the_image_is_scored(sample_refer, tmp_path):
    predictions = tmp_path / "p.json"
    entries = write_val_predictions(sample_refer, predictions)
    height, width = entries[0]["segmentation"]["size"]
    entries[0]["segmentation"] = {"size": [height, width], "counts": [height * width]}
    predictions.write_text(json.dumps(entries))
    assert main(score_argv(predictions, tmp_path / "s/m.json")) == 0
    assert json.loads((tmp_path / "s/m.json").read_text())["metrics"]["instance_iou"] < 1


@pytest.mark.parametrize(
    ("counts", "problem"),
    [
        (lambda n: [-5, n + 5], "uncompressed RLE count -5 is not a non-negative integer"),
        (lambda n: [1.5, n - 1.5], "uncompressed RLE count 1.5 is not a non-negative integer"),
        (lambda n: [1, 2, 3], "uncompressed RLE counts add up to 6 pixels, not {h}x{w} = {n}"),
    ],
    ids=["negative", "fraction", "wrong-sum"],
)
def test_an_uncompressed_rle_that_cannot_be_the_mask_is_refused(
    counts, problem, sample_refer, tmp_path, capsys
):
    predictions = tmp_path / "p.json"
    entries = write_val_predictions(sample_refer, predictions)
    height, width = entries[0]["segmentation"]["size"]
    entries[0]["segmentation"]["counts"] = counts(height * width)
    predictions.write_text(json.dumps(entries))
    out = tmp_path / "s/m.json"
    assert main(score_argv(predictions, out)) == 2
    reason = problem.format(h=height, w=width, n=height * width)
    assert error_line(capsys) == (
        f"rsis score: error: {predictions}: sent_id {entries[0]['sent_id']} has an "
        f"undecodable RLE ({reason}); write it with pycocotools.mask.encode"
    )
    assert not out.parent.exists()


GIVE = {
    "predictions": ('give --predictions a JSON list of {"sent_id", "segmentation": COCO RLE}'),
    "metrics": "give --metrics a metrics file that rsis evaluate writes",
    "records": "give --records the convergence.json that rsis train writes",
    "curves": "give --run LABEL the metrics.csv that rsis train writes in the run folder",
}


def command(option: str, path: Path, tmp_path: Path) -> list[str]:
    """A command that reads ``path`` through ``option``; every other input is good."""
    tables = ["--out-dir", str(tmp_path / "t"), "--dataset-label", "x"]
    return {
        "predictions": score_argv(path, tmp_path / "s/m.json"),
        "metrics": ["tables", "--metrics", str(path), "--grid", str(CONFIG), *tables],
        "records": ["convergence", "--records", str(path), "--out", str(tmp_path / "c.md")],
        "curves": ["curves", "--run", "a", str(path), "--out", str(tmp_path / "c.png")],
    }[option]


@pytest.mark.parametrize("option", sorted(GIVE))
def test_a_missing_or_non_utf8_input_file_names_the_option(option, tmp_path, capsys):
    name, kind = ("in.csv", "a CSV file") if option == "curves" else ("in.json", "a JSON file")
    path = tmp_path / name
    assert main(command(option, path, tmp_path)) == 2
    cmd = command(option, path, tmp_path)[0]
    assert error_line(capsys) == f"rsis {cmd}: error: {path}: no such file; {GIVE[option]} ({kind})"
    path.write_bytes(NOT_UTF8)
    assert main(command(option, path, tmp_path)) == 2
    assert error_line(capsys) == (
        f"rsis {cmd}: error: {path} is not UTF-8 text (byte 0: invalid start byte): "
        f"{GIVE[option]} ({kind})"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("option", ["predictions", "metrics", "records"])
def test_an_input_that_is_not_json_names_the_line(option, tmp_path, capsys):
    path = tmp_path / "in.json"
    path.write_text('{"a": 1,\n')
    assert main(command(option, path, tmp_path)) == 2
    assert error_line(capsys) == (
        f"rsis {command(option, path, tmp_path)[0]}: error: {path} is not valid JSON (line 2, "
        f"column 1: Expecting property name enclosed in double quotes): {GIVE[option]}"
    )


def test_a_grid_file_that_is_missing_not_utf8_or_not_yaml_is_refused(tmp_path, capsys):
    grid = tmp_path / "config.yaml"
    argv = ["tables", "--metrics", str(metrics_file(tmp_path)), "--grid", str(grid)]
    argv += ["--out-dir", str(tmp_path / "t"), "--dataset-label", "x"]
    give = "give --grid config.yaml, whose `grid` lays out the tables"
    assert main(argv) == 2
    assert error_line(capsys) == f"rsis tables: error: {grid}: no such file; {give} (a YAML file)"
    grid.write_bytes(NOT_UTF8)
    assert main(argv) == 2
    assert error_line(capsys) == (
        f"rsis tables: error: {grid} is not UTF-8 text (byte 0: invalid start byte): {give} "
        "(a YAML file)"
    )
    grid.write_text("grid: [\n")
    assert main(argv) == 2
    assert error_line(capsys) == (
        f"rsis tables: error: {grid} is not JSON or YAML (expected the node content, but found "
        f"'<stream end>' at line 2, column 1); {give}, or the grid as JSON text"
    )
    assert not (tmp_path / "t").exists()


def _drop(section: str, index: int, key: str):
    return lambda instances: instances[section][index].pop(key)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (
            _drop("annotations", 0, "id"),
            "field 'annotations[0].id' is missing, expected an integer",
        ),
        (_drop("images", 1, "id"), "field 'images[1].id' is missing, expected an integer"),
        (
            _drop("categories", 0, "name"),
            "field 'categories[0].name' is missing, expected a string",
        ),
        (
            lambda instances: instances["images"][2].update(height="480"),
            "field 'images[2].height' is '480', expected an integer",
        ),
        (
            lambda instances: instances.update(images={"id": 1}),
            "'images' is a dict, expected a list",
        ),
        (
            lambda instances: instances.update(annotations=None),
            "'annotations' is a NoneType, expected a list",
        ),
        (
            lambda instances: instances["annotations"].append(7),
            "annotations[?] is 7, not an object",
        ),
        (
            lambda instances: instances.pop("categories"),
            "missing the COCO field 'categories'",
        ),
    ],
    ids=[
        "ann-id",
        "image-id",
        "category-name",
        "height-str",
        "images-dict",
        "annotations-null",
        "annotation-int",
        "no-categories",
    ],
)
def test_instances_with_a_bad_section_or_entry_name_it(edit, problem, tmp_path, capsys):
    root = tmp_path / "sample"
    shutil.copytree(SAMPLE_ROOT / "refcoco", root / "refcoco")
    path = root / "refcoco/instances.json"
    instances = json.loads(path.read_text())
    problem = problem.replace("?", str(len(instances["annotations"])))
    edit(instances)
    path.write_text(json.dumps(instances))
    assert main(score_argv(tmp_path / "p.json", tmp_path / "s/m.json", root)) == 2
    assert error_line(capsys) == f"rsis score: error: {path}: {problem}; {DAMAGED}"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"run": {**RUN, "dim": "abc"}}, "field 'run': run dim 'abc' must be 'native' or a "
         "positive integer"),
        ({"run": {**RUN, "batch_size": "x"}}, "field 'run': run batch size 'x' must be an integer"),
        ({"run": {**RUN, "batch_size": True}}, "field 'run': run batch size True must be an "
         "integer"),
        ({"split": 5}, "field 'split' is 5, expected a string; see docs/metrics.md for the "
         "metrics file format"),
        ({"conventions": None}, "field 'conventions' is None, expected an object; see "
         "docs/metrics.md for the metrics file format"),
        ({"metrics": {**METRICS, "overall_iou": "0.4"}}, "field 'metrics.overall_iou' is "
         "'0.4', expected a number; see docs/metrics.md for the metrics file format"),
        ({"metrics": {**METRICS, "n_samples": True}}, "field 'metrics.n_samples' is True, "
         "expected an integer; see docs/metrics.md for the metrics file format"),
        ({"metrics": {**METRICS, "n_referents": 10.5}}, "field 'metrics.n_referents' is 10.5, "
         "expected an integer; see docs/metrics.md for the metrics file format"),
        ({"breakdowns": {"expression_type": {"attribute": {**METRICS, "instance_iou": "x"}}}},
         "field 'breakdowns.expression_type.attribute.instance_iou' is 'x', expected a number; "
         "see docs/metrics.md for the metrics file format"),
        ({"breakdowns": {"expression_type": {"attribute": 0.5}}}, "field "
         "'breakdowns.expression_type.attribute' is 0.5, expected an object; see "
         "docs/metrics.md for the metrics file format"),
    ],
    ids=["dim-text", "batch-size-text", "batch-size-bool", "split-int", "conventions-null",
         "metric-text", "metric-bool", "count-fraction", "breakdown-metric-text",
         "breakdown-not-object"],
)  # fmt: skip
@pytest.mark.parametrize("cmd", ["tables", "findings", "types"])
def test_a_metrics_field_of_the_wrong_type_is_refused(cmd, changes, problem, tmp_path, capsys):
    path = metrics_file(tmp_path, **changes)
    rest = {
        "tables": ["--grid", str(CONFIG), "--out-dir", str(tmp_path / "t"), "--dataset-label", "x"],
        "findings": ["--grid", str(CONFIG), "--out", str(tmp_path / "t/findings.md")],
        "types": ["--out-dir", str(tmp_path / "t")],
    }[cmd]
    assert main([cmd, "--metrics", str(path), *rest]) == 2
    assert error_line(capsys) == f"rsis {cmd}: error: {path}: {problem}"
    assert not (tmp_path / "t").exists()


def test_a_metrics_file_without_a_seed_names_run_seed(tmp_path, capsys):
    path = metrics_file(tmp_path, run=RUN)
    out = tmp_path / "t"
    argv = ["--grid", str(CONFIG), "--out-dir", str(out), "--dataset-label", "x"]
    assert main(["tables", "--metrics", str(path), *argv]) == 2
    assert error_line(capsys) == (
        f"rsis tables: error: {path}: field 'run.seed' is missing, expected an integer; "
        "rerun rsis evaluate with this version"
    )
    assert not out.exists()


CONVERGENCE = {"run": "mean-pca-64-random-bs32", "seed": 0, "best_epoch": 4,
               "best_val_instance_iou": 0.4, "epochs_run": 9, "epoch_cap": 20, "patience": 5,
               "reason": "early stop", "min_epochs": 1}  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"best_epoch": "abc"}, "field 'best_epoch' is 'abc', expected an integer"),
        (
            {"best_val_instance_iou": None},
            "field 'best_val_instance_iou' is None, expected a number",
        ),
        ({"seed": None}, "field 'seed' is None, expected an integer"),
        ({"patience": False}, "field 'patience' is False, expected an integer"),
    ],
)
def test_a_convergence_record_field_of_the_wrong_type_is_refused(
    changes, problem, tmp_path, capsys
):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(CONVERGENCE))
    bad.write_text(json.dumps(CONVERGENCE | changes))
    out = tmp_path / "convergence.md"
    assert main(["convergence", "--records", str(good), "--out", str(out)]) == 0
    out.unlink()
    assert main(["convergence", "--records", str(good), str(bad), "--out", str(out)]) == 2
    assert error_line(capsys) == (
        f"rsis convergence: error: {bad}: not a convergence record: {problem}; retrain the run"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("cell", "shown"),
    [("abc", "'abc'"), ("", "an empty cell"), ("-inf", "-inf")],
    ids=["text", "empty", "infinite"],
)
def test_a_metrics_csv_cell_that_is_not_a_number_is_refused(cell, shown, tmp_path, capsys):
    path = tmp_path / "metrics.csv"
    rows = ["epoch,train_loss,val_instance_iou", "0,0.9,0.2", f"1,{cell},0.3", "2,0.7,0.35"]
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "curves.png"
    assert main(["curves", "--run", "a", str(path), "--out", str(out)]) == 2
    assert error_line(capsys) == (
        f"rsis curves: error: {path}: line 3, column 'train_loss' holds {shown}, not a finite "
        "number; give --run LABEL the metrics.csv that rsis train writes in the run folder"
    )
    assert not out.exists()


@pytest.mark.parametrize("blocked", ["m.md", "m.csv"])
def test_score_writes_all_its_outputs_or_none(blocked, sample_refer, tmp_path, capsys):
    predictions = tmp_path / "p.json"
    write_val_predictions(sample_refer, predictions)
    folder = tmp_path / "s"
    (folder / blocked).mkdir(parents=True)
    assert main(score_argv(predictions, folder / "m.json")) == 2
    assert error_line(capsys) == (
        f"rsis score: error: {folder / blocked} is a folder: give a file name for this output"
    )
    assert [p.name for p in folder.iterdir()] == [blocked]


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("s/", "argument --out: 's/' ends with '/', so it names a folder: give a file name in it"),
        ("s/m.md", "--out s/m.md: the .md table and the .csv are written beside it, so give the "
         "metrics file a .json name"),
    ],
)  # fmt: skip
def test_score_refuses_an_out_that_is_a_folder_or_its_table(out, message, tmp_path, capsys):
    (tmp_path / "p.json").write_text("[]")
    argv = score_argv(tmp_path / "p.json", out)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse refuses the argument itself
            code = exit_.code
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"rsis score: error: {message}"
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_tables_write_all_their_files_or_none(tmp_path, capsys):
    out = tmp_path / "t"
    (out / "table2.tex").mkdir(parents=True)
    argv = ["tables", "--metrics", str(metrics_file(tmp_path)), "--grid", str(CONFIG)]
    assert main([*argv, "--out-dir", str(out), "--dataset-label", "x"]) == 2
    assert error_line(capsys) == (
        f"rsis tables: error: {out / 'table2.tex'} is a folder: give a file name for this output"
    )
    assert [p.name for p in out.iterdir()] == ["table2.tex"]
    (out / "table2.tex").rmdir()
    assert main([*argv, "--out-dir", str(out), "--dataset-label", "x"]) == 0
    assert len(list(out.iterdir())) == 10


def test_write_texts_leaves_nothing_when_a_later_file_fails(tmp_path):
    with pytest.raises(TypeError):
        write_texts({tmp_path / "a.md": "written first", tmp_path / "b.md": None})
    assert list(tmp_path.iterdir()) == []
    write_texts({tmp_path / "a.md": "one", tmp_path / "b.md": "two"})
    assert [(tmp_path / n).read_text() for n in ("a.md", "b.md")] == ["one", "two"]
