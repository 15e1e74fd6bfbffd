"""``d2af curves``: metrics.json read as detectron2 writes it (hand-made lines), one PNG for several
runs, and the errors."""
import json

import pytest

from d2_anchorfree.cli import curves


def _write(folder, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return folder


def test_metrics_are_read_per_iteration_with_the_last_value_of_a_resumed_iteration(tmp_path):
    run = _write(tmp_path / "a", [
        {"iteration": 19, "total_loss": 2.0, "lr": 0.004, "loss_cls": 1.5},
        {"iteration": 39, "total_loss": 1.5, "lr": 0.008, "loss_cls": 1.0},
        {"iteration": 39, "total_loss": 1.4, "lr": 0.008, "loss_cls": 0.9},  # written again after a resume
        {"iteration": 49, "bbox/AP": 12.5, "bbox/AP50": 40.0, "flag": True},
    ])
    series = curves.read_metrics(str(run))
    assert series["total_loss"] == [(19, 2.0), (39, 1.4)]
    assert series["bbox/AP"] == [(49, 12.5)] and "flag" not in series and "iteration" not in series


def test_two_runs_side_by_side_in_one_png(tmp_path, capsys):
    a = _write(tmp_path / "fcos", [{"iteration": i, "total_loss": 2.0 / (i + 1), "lr": 0.01} for i in range(0, 100, 20)])
    b = _write(tmp_path / "gfl", [{"iteration": i, "total_loss": 1.0 / (i + 1)} for i in range(0, 100, 20)]
               + [{"iteration": 99, "bbox/AP": 15.0}])
    out = tmp_path / "plots" / "runs.png"
    assert curves.main([str(a), str(b / "metrics.json"), "--metrics", "total_loss", "lr", "bbox/AP", "bbox/AP75",
                        "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # bbox/AP75 is in no run: left out; the others are drawn
    assert "wrote" in capsys.readouterr().out and curves.plot_runs(
        {"fcos": curves.read_metrics(str(a))}, ["total_loss", "bbox/AP75"], str(tmp_path / "x.png")) == ["total_loss"]


def test_errors_name_the_file_the_line_and_the_metrics_there(tmp_path, capsys):
    assert curves.main([str(tmp_path / "missing")]) == 1
    assert "no metrics.json at" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text('{"iteration": 1, "total_loss": 1.0}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.json:2: not a metrics line"):
        curves.read_metrics(str(bad))
    good = _write(tmp_path / "good", [{"iteration": 1, "total_loss": 1.0}])
    assert curves.main([str(good), "--metrics", "bbox/AP", "--out", str(tmp_path / "y.png")]) == 1
    assert "none of the metrics ['bbox/AP'] is in the runs; they have: ['total_loss']" in capsys.readouterr().err
