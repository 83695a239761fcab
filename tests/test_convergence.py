"""Best epoch and stopping reason of training runs, and their summary."""

from __future__ import annotations

import pytest

from rsis.cli import main
from rsis.convergence import EARLY_STOP, EPOCH_CAP, Convergence, last_epoch_under, patience_spent
from rsis.errors import UserError


def test_a_run_that_stopped_improving_stopped_early():
    ious = [0.1, 0.3, 0.5, 0.4, 0.5, 0.45]  # best at epoch 2 (a tie later does not count)
    record = Convergence.of_history("a", 0, ious, epoch_cap=10, patience=3, min_epochs=1)
    assert (record.best_epoch, record.epochs_run, record.reason) == (2, 6, EARLY_STOP)
    assert record.best_val_instance_iou == 0.5
    assert patience_spent(5, 2, 3, 1) and not patience_spent(4, 2, 3, 1)


def test_no_run_stops_early_before_the_minimum_epochs():
    """A plateau from the start: patience alone would stop it after epoch 3."""
    assert patience_spent(3, 0, 3, min_epochs=4) and not patience_spent(3, 0, 3, min_epochs=5)
    plateau = [0.2, 0.19, 0.2, 0.18, 0.19]
    record = Convergence.of_history("p", 0, plateau, epoch_cap=10, patience=3, min_epochs=6)
    assert record.reason == EPOCH_CAP and record.min_epochs == 6  # 5 epochs: not a valid stop
    record = Convergence.of_history("p", 0, plateau, epoch_cap=10, patience=3, min_epochs=5)
    assert record.reason == EARLY_STOP


def test_a_run_still_improving_at_the_cap_is_reported_as_capped(tmp_path):
    capped = Convergence.of_history(
        "b", 1, [0.1, 0.2, 0.3, 0.35], epoch_cap=4, patience=2, min_epochs=1
    )
    assert capped.reason == EPOCH_CAP and capped.best_epoch == 3
    stopped = Convergence.of_history("b", 0, [0.4, 0.3, 0.2], epoch_cap=4, patience=2, min_epochs=3)
    paths = []
    for record in (capped, stopped):
        paths.append(tmp_path / f"{record.seed}.json")
        record.write(paths[-1])
    assert Convergence.read(paths[0]) == capped
    out = tmp_path / "convergence.md"
    assert main(["convergence", "--records", *map(str, paths), "--out", str(out)]) == 0
    text = out.read_text()
    assert "1 of 2 runs hit the epoch cap" in text
    assert (
        "| b     | 0      | 1            | 3 of 4       | 2          | 3            | 40.00" in text
    )
    assert (
        "| b     | 1      | 4            | 4 of 4       | 2          | 1            | 35.00" in text
    )
    assert text.endswith("| 35.00                   | epoch cap    |\n")  # the capped row


def test_a_run_without_epochs_or_a_broken_record_is_an_error(tmp_path):
    with pytest.raises(UserError, match="run c seed 0 has no finished epoch"):
        Convergence.of_history("c", 0, [], epoch_cap=3, patience=1, min_epochs=1)
    broken = tmp_path / "convergence.json"
    broken.write_text('{"run": "c"}')
    with pytest.raises(UserError, match="not a convergence record"):
        Convergence.read(broken)


def test_last_epoch_under_replays_the_cap_and_the_stopping_rule():
    scores = [0.1, 0.2, 0.2, 0.2]  # best at epoch 1; a tie is no improvement
    assert last_epoch_under(scores, epoch_cap=10, patience=2, min_epochs=1) == 3
    assert last_epoch_under(scores, epoch_cap=2, patience=2, min_epochs=1) == 1
    assert last_epoch_under(scores, epoch_cap=10, patience=5, min_epochs=1) is None
    assert last_epoch_under(scores, epoch_cap=10, patience=1, min_epochs=5) is None
    assert last_epoch_under(scores, epoch_cap=10, patience=1, min_epochs=3) == 2
