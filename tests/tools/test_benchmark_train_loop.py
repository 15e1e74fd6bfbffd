"""benchmarks/train_loop.py (d2af benchmark train_loop): the real trainer's iterations split into
phases. A 2-iteration run of the tiny GFL through the command line records every phase,
non-negative, the timed parts within the iteration; the table and the summary are checked on
made-up records. No timing is checked."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import train_loop

from conftest import REPO, trees_dir

TIMED = [p for p in train_loop.PHASES if p != "other"]


def record(**ms):
    r = {k: ms.get(k, 1.0) / 1000.0 for k in ("iteration",) + train_loop.PHASES + train_loop.OTHER_PARTS}
    r["hook:TrainingHealthCheck"] = r["hooks"]
    return r


def test_summary_and_table_from_records():
    runs = [{"records": [record(iteration=100.0, backward=60.0), record(iteration=300.0, backward=80.0)],
             "images": 4, "workers": 1, "threads": 2, "device": "cpu", "load": [3.0, 3.5]}]
    row = train_loop.summarize_entry({"label": "GFL", "config": "c.yaml", "opts": [], "runs": runs})
    assert row["images_per_s"] == pytest.approx(8 / 0.4)  # 8 images in 400 ms
    assert row["ms_per_image"] == pytest.approx(50.0)
    assert row["ms"]["iteration"]["median"] == pytest.approx(200.0)
    assert row["share"]["backward"] == pytest.approx(70.0 / 200.0)
    assert row["mean_ms"]["hook:TrainingHealthCheck"] == pytest.approx(1.0)
    text = train_loop.table([row, {"label": "broken", "error": "ValueError: no data"}])
    assert "| GFL | 20.00 | 50 | 200 | 1.0 (0%) |" in text and "70.0 (35%)" in text and "3.0-3.5" in text
    assert "| broken | ValueError: no data |" in text
    assert "| GFL | TrainingHealthCheck | 1.00 | 1.00 | 1.0 |" in train_loop.hook_table([row])


@pytest.mark.slow  # builds the trainer and trains 2 iterations in a subprocess (18 s at load 4.6 on 2 cores)
def test_two_iterations_of_the_tiny_gfl(tmp_path):
    out = tmp_path / "train_loop.json"
    config = "configs/GFL/GFL_tiny_R_18_cpu.yaml"
    run = subprocess.run([sys.executable, "-m", "benchmarks.train_loop", "--configs", config, "--iters", "2",
                          "--warmup", "0", "--trees", trees_dir(), "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| GFL_tiny_R_18_cpu |" in run.stdout
    saved = json.loads(out.read_text())
    records = saved["runs"]["GFL_tiny_R_18_cpu"][0]["records"]
    assert len(records) == 2
    for r in records:
        assert set(train_loop.PHASES) | set(train_loop.OTHER_PARTS) | {"iteration"} <= set(r)
        for key in (*train_loop.PHASES, *train_loop.OTHER_PARTS):
            assert r[key] >= 0, (key, r)
        # the timed phases are disjoint intervals of the iteration; hooks and metrics lie in "other"
        assert sum(r[p] for p in TIMED) <= r["iteration"]
        assert r["hooks"] + r["metrics"] <= r["other"] + 1e-9
        assert r["backbone"] > 0 and r["backward"] > 0 and r["step"] > 0 and r["assign"] > 0
        assert r["hook:TrainingHealthCheck"] > 0  # SOLVER.HEALTH_CHECK is on in the tiny configs
    row = saved["rows"][0]
    assert row["images"] == 4 and row["workers"] == 1 and row["images_per_s"] > 0
    assert saved["environment"]["torch"]
