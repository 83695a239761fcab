# Configuration validation and the helpers every rule file uses.
from pathlib import Path

from snakemake.utils import validate

validate(config, workflow.source_path("../schemas/config.schema.yaml"))

DATASET = config["dataset"]
if DATASET not in config["datasets"]:
    raise ValueError(
        f"config.yaml: dataset {DATASET!r} is not a key of `datasets` "
        f"({', '.join(config['datasets'])}); set `dataset` to one of them"
    )
DS = config["datasets"][DATASET]
if DS["setting"] not in config["settings"]:
    raise ValueError(
        f"config.yaml: datasets.{DATASET}.setting {DS['setting']!r} is not a key of `settings`"
    )
SETTING = config["settings"][DS["setting"]]
LANG = {**config["language"], "model": SETTING["text_model"]}
IS_DEMO = DATASET == "demo"
DEMO_ROOT = "resources/demo"


def result(path):
    """Path of a derived artifact of the configured dataset."""
    return f"results/{DATASET}/{path}"


def log_path(path):
    return f"logs/{DATASET}/{path}.log"


def benchmark_path(path):
    return f"benchmarks/{DATASET}/{path}.tsv"


def dataset_inputs(wildcards=None):
    """Files the data stage reads: the generated demo folder, or the real refer files.

    For real data, a missing file fails here, naming the path and the config key to set.
    """
    if IS_DEMO:
        return [DEMO_ROOT]
    folder = Path(DS["root"]) / DS["name"]
    files = [folder / f"refs({DS['splitBy']}).p", folder / "instances.json"]
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
                f"{path} does not exist: set datasets.{DATASET}.{key} in config.yaml "
                "(README.md, 'Reproducing the paper', says where the files come from)"
            )
    return [str(f) for f in files]


def all_outputs():
    """Everything `snakemake` builds by default."""
    return expand(result("cache/{split}.h5"), split=DS["splits"])
