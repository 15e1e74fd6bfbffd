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
