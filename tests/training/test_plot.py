"""The plot command: curves read from train_log.csv, drawn with matplotlib when installed."""

import sys

import pytest

from resnext_tf.training import plot, run_log
from resnext_tf.training.metrics import Errors


def write_run(path, val_errors):
    logger = run_log.RunLogger(str(path))
    for epoch, val in enumerate(val_errors, start=1):
        train, valid = Errors(1.0, val + 5.0, 1.0, 10), Errors(1.0, val, 1.0, 10)
        logger.epoch(epoch, 0.1, train, valid, seconds=1.0, images_per_second=10.0)
    return str(path)


def test_load_curves(tmp_path):
    run = write_run(tmp_path / "a", [50.0, 40.0, 30.0])
    assert plot.load_curves(run) == ([1, 2, 3], [55.0, 45.0, 35.0], [50.0, 40.0, 30.0])
    with pytest.raises(ValueError, match="run_dir="):
        plot.load_curves(str(tmp_path / "missing"))


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run = write_run(tmp_path / "a", [50.0])
    with pytest.raises(SystemExit) as exit_info:
        plot.main(["--runs", run, "--out", str(tmp_path / "c.png")])
    assert exit_info.value.code == 2
    assert 'pip install "resnext_tf[plot]"' in capsys.readouterr().err


def test_draws_train_dashed_and_val_solid(tmp_path, monkeypatch):
    # The test extra installs matplotlib; without it this test fails rather than skips.
    from matplotlib import pyplot

    runs = [write_run(tmp_path / n, v) for n, v in (("a", [50.0, 40.0]), ("b", [60.0, 20.0]))]
    out = tmp_path / "curves.png"
    figures = []
    monkeypatch.setattr(pyplot, "close", figures.append)  # keep the figure to inspect it
    plot.main(["--runs", ",".join(runs), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = figures[0].axes[0].get_lines()
    assert [line.get_linestyle() for line in lines] == ["--", "-", "--", "-"]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert list(lines[3].get_ydata()) == [60.0, 20.0]
