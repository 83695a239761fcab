"""``rsis bench rehearsal``: per-rule figures and per-item ratios from Snakemake benchmark files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from rsis.cli import main
from rsis.usage import PREFIX

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _run(root: Path, images: int, side: int, expressions: int, cpu: tuple[float, float]) -> Path:
    """A workflow folder with a demo of ``images`` pictures of ``side`` x 2 ``side`` pixels
    and a tokens file."""
    (root / "resources/demo/images").mkdir(parents=True)
    for i in range(images):
        picture = Image.new("RGB", (2 * side, side), (i, 0, 0))
        picture.save(root / f"resources/demo/images/demo_{i:06d}.jpg")
    (root / "results/demo/text").mkdir(parents=True)
    with h5py.File(root / "results/demo/text/tokens.h5", "w") as f:
        f["sent_id"] = np.arange(expressions)
    (root / "results/demo/cache").mkdir(parents=True)
    with h5py.File(root / "results/demo/cache/val.h5", "w") as f:
        f["image_id"] = np.arange(images // 4)  # the baselines' items: val images
    (root / "results/demo/tables").mkdir(parents=True)
    (root / "results/demo/tables/baselines.csv").write_bytes(b"x" * 300_000)
    (root / "benchmarks/demo/text").mkdir(parents=True)
    rules = (("demo_dataset", cpu[0]), ("demo/text/tokenize", cpu[1]), ("demo/baselines", 2.0))
    for name, seconds in rules:
        row = f"{10 * seconds}\t0:00:10\t321.5\t900\t1\t1\t0\t0\t1\t{seconds}\n"
        (root / f"benchmarks/{name}.tsv").write_text(HEADER + row)
    return root


def _log_usage(root: Path, cpu: float, peak_mb: float) -> None:
    """The tokenize rule's log, ending in an exact usage line above Snakemake's samples."""
    (root / "logs/demo/text").mkdir(parents=True)
    line = f"{PREFIX} {cpu:.2f} CPU s (this process and its finished children), peak RSS"
    (root / "logs/demo/text/tokenize.log").write_text(f"progress\n{line} {peak_mb:.0f} MB\n")


def test_rehearsal_table_gives_per_item_cpu_and_ratio(tmp_path, capsys):
    small = _run(tmp_path / "small", images=4, side=500, expressions=10, cpu=(2.0, 1.0))
    large = _run(tmp_path / "large", images=40, side=1000, expressions=1000, cpu=(30.0, 50.0))
    _log_usage(large, cpu=70.0, peak_mb=2000)  # exact figures replace the sampled 50 CPU s
    assert main(["bench", "rehearsal", "--small", str(small), "--large", str(large)]) == 0
    per_item, per_megapixel = capsys.readouterr().out.split("\n\n")
    rows = {
        line.split(" | ")[0].strip("| "): line.split(" | ") for line in per_item.splitlines()[2:]
    }
    demo, tokenize = rows["demo_dataset"], rows["text/tokenize"]
    assert demo[2] == "30 (sampled)" and demo[3] == "322 MB"
    assert demo[5:9] == ["40", "500.00 (sampled)", "750.00", "1.50 |"]
    assert tokenize[2:4] == ["70", "2,000 MB"]  # the log's line, not the benchmark file's
    assert tokenize[5:9] == ["1,000", "100.00 (sampled)", "70.00", "0.70 |"]
    # 2 CPU s at both scales over 1 and 10 val images
    assert rows["baselines"][4:9] == ["0.3 MB", "10", "2,000.00 (sampled)", "200.00", "0.10 |"]
    # 4 pictures of 0.5 megapixels against 40 of 2: per megapixel 1,000 and 375 CPU ms
    assert per_megapixel.splitlines()[2:] == [
        "| demo_dataset | 2.0 | 80.0 | 1,000.0 | 375.0 | 0.38 |"
    ]
    assert main(["bench", "rehearsal", "--small", str(small), "--large", str(tmp_path)]) == 2
