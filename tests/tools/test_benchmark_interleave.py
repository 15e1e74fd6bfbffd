"""The detectors benchmark times models round-robin (``interleaved``, benchmarks/timing.py): every
round runs every model once, in an order rotated by the round, keeps only the rounds after the
warm-up, and drops a model that raises without stopping the others."""
from benchmarks.timing import interleaved


def test_rounds_rotate_the_order_and_drop_the_warmup():
    calls = []

    def measure(e):
        calls.append(e["label"])
        return {"total": float(len(calls))}  # the call's position in the whole sequence

    entries = [{"label": x} for x in "ABC"]
    samples = interleaved(entries, rounds=2, warmup=1, measure=measure)
    assert "".join(calls) == "ABC" + "BCA" + "CAB"
    # Round 0 (calls 1-3) is warm-up; A ran as calls 6 and 8, B as 4 and 9, C as 5 and 7.
    assert samples == {"A": {"total": [6.0, 8.0]}, "B": {"total": [4.0, 9.0]}, "C": {"total": [5.0, 7.0]}}


def test_a_failing_model_is_reported_and_skipped_afterwards():
    calls = []

    def measure(e):
        calls.append(e["label"])
        if e["label"] == "B" and calls.count("B") == 2:
            raise RuntimeError("out of memory at 800x1333")
        return {"total": 1.0}

    entries = [{"label": x} for x in "ABC"]
    samples = interleaved(entries, rounds=3, warmup=0, measure=measure)
    assert entries[1]["error"] == "RuntimeError: out of memory at 800x1333"
    assert "error" not in entries[0] and "error" not in entries[2]
    assert calls.count("B") == 2 and calls.count("A") == 3 and calls.count("C") == 3
    assert samples["A"]["total"] == [1.0] * 3 and samples["B"]["total"] == [1.0]


def test_export_benchmark_interleaves_models_and_splits_rows_per_model(monkeypatch):
    """benchmarks/export.py times all models' backends in one round-robin loop (a repetition of
    model A's backends is never all before model B's), each on its own input, and still writes
    one row per model and backend with that model's own eager ratio."""
    import argparse

    import numpy as np

    from benchmarks import export as bench

    calls = []
    backbone_inputs = {"A": np.zeros((1, 3, 4, 4), np.float32), "B": np.ones((1, 3, 4, 4), np.float32)}

    def fake_export(name, args, image_path, workdir, log=print):
        return name, {"onnx": f"{name}.onnx"}, {"config": name}

    def fake_runners(paths, model, args, part):
        def runner(backend):
            def run(x):
                calls.append((model, backend, part, float(x.mean())))
                return [np.zeros((2, 4)), np.zeros(2), np.zeros(2)]  # two boxes
            return run
        return {b: runner(b) for b in ("eager", "onnxruntime")}

    monkeypatch.setattr(bench, "export_model", fake_export)
    monkeypatch.setattr(bench, "make_runners", fake_runners)
    monkeypatch.setattr(bench, "backbone_input",
                        lambda model, image: __import__("torch").from_numpy(backbone_inputs[model]))
    args = argparse.Namespace(sizes=["8x8"], parts=True, runs=2, warmup=1, profile=False)
    rows, profiles, infos = bench.bench_models(["A", "B"], args, "", "", log=lambda *a: None)

    whole = [c for c in calls if c[2] == "whole"]
    assert len(whole) == 3 * 4  # (1 warm-up + 2 runs) x 2 models x 2 backends
    # round-robin over the four runners, rotated by one each repetition
    order = [(m, b) for m, b, _, _ in whole]
    runners = [("A", "eager"), ("A", "onnxruntime"), ("B", "eager"), ("B", "onnxruntime")]
    assert order == runners + runners[1:] + runners[:1] + runners[2:] + runners[:2]
    # the backbone part feeds each model its own input
    assert {(m, x) for m, _, p, x in calls if p == "backbone"} == {("A", 0.0), ("B", 1.0)}
    assert [(r["model"], r["part"], r["backend"]) for r in rows] == [
        (m, p, b) for p in ("whole", "backbone") for m in "AB" for b in ("eager", "onnxruntime")]
    for r in rows:
        assert len(r["seconds"]) == 2 and r["eager_over_backend"] > 0
        assert r.get("detections") == (2 if r["part"] == "whole" else None)
    assert infos == {"A": {"config": "A"}, "B": {"config": "B"}} and profiles == {}
