"""train's progress line (epoch N/M, img/s, running loss/acc, lr, time left for the run) and its 80-column table."""

from __future__ import annotations

import io

from rich.console import Console

from cnntools.output.progress import TrainProgress, format_duration, plural


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_line_shows_the_whole_run():
    clock = FakeClock()
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    bar = TrainProgress(console, epochs=20, steps_per_epoch=10, clock=clock)
    bar.start(3, 10)
    for _ in range(4):
        clock.now += 0.5  # 0.5 s per update of 32 images
        bar.advance(32, {"loss": 0.4321, "acc": 0.875, "lr": 0.001})
    line = bar.stats()
    bar.stop()
    # 4 updates in 2 s; 6 left in epoch 3 and 17 epochs of 10: 176 updates x 0.5 s = 88 s
    assert bar.time_left(clock.now) == 88.0
    assert line == "64 img/s  loss 0.4321  acc 0.8750  lr 0.001  left 0:01:28"
    assert "epoch 3/20" in console.file.getvalue()


def test_words_and_durations():
    assert plural(1, "epoch") == "1 epoch" and plural(2, "epoch") == "2 epochs" and plural(0, "epoch") == "0 epochs"
    assert plural(1234, "weight update") == "1,234 weight updates"
    assert format_duration(3725.4) == "1:02:05" and format_duration(90061) == "1d 1:01:01"


def test_epoch_table_fits_80_columns_and_final_line_counts_epochs(cli, tmp_path):
    result = cli("train", "--arch", "simple-cnn", "--image-size", "8", "--device", "cpu", "--batch-size", "256",
                 "--augment", "none", "--epochs", "1", "-o", tmp_path / "m.safetensors")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "img/s", "updates"]
    assert all(len(line) <= 80 for line in lines)
    assert "in 1 epoch;" in result.stderr
    # --test-each-epoch: the test columns take seconds' and updates' place, still 80 wide.
    result = cli("train", "--arch", "simple-cnn", "--image-size", "8", "--device", "cpu", "--batch-size", "256",
                 "--augment", "none", "--epochs", "2", "--test-each-epoch", "-o", tmp_path / "t.safetensors")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "img/s"]
    assert len(lines) == 3 and all(len(line) <= 80 for line in lines)
    assert "in 2 epochs;" in result.stderr


def test_one_bar_helper_draws_on_a_terminal_and_nothing_elsewhere(capsys):
    from cnntools.output import emitter as output
    from cnntools.output.progress import progress_bar, start_bar

    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    bar = start_bar("eval [model]", 10, stats=True, rate="images", console=console)
    bar(4)
    bar.update(advance=2, stats="loss 0.5")
    assert bar.progress.tasks[0].completed == 6
    bar.stop()
    drawn = console.file.getvalue()
    assert "eval [model]" in drawn and "6/10" in drawn and "loss 0.5" in drawn
    # Off a terminal (pytest captures stderr) and under --quiet: a silent bar with the same API.
    for quiet in (False, True):
        output.configure(quiet=quiet)
        with progress_bar("decode", 3, remaining=True) as silent:
            silent(3)
            silent.update(advance=1, stats="x")
            assert not silent.shown
    output.configure(quiet=False)
    assert capsys.readouterr().err == ""
