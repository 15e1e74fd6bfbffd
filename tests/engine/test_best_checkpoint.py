"""model_best.pth and early stopping (AnchorFreeBestCheckpointer): hand-computed sequences of
evaluation results on a stub trainer whose one-weight model holds the iteration, so each saved
file shows which iteration's weights it holds; resume; the config errors. The run through
AnchorFreeTrainer (patience, resume) is in tests/engine/test_train_net.py."""
import json
import math
import os
import types

import pytest
import torch

from detectron2.config import get_cfg

import d2_anchorfree
from d2_anchorfree.checkpoint import AnchorFreeCheckpointer
from d2_anchorfree.engine import AnchorFreeTrainer
from d2_anchorfree.engine.hooks import AnchorFreeBestCheckpointer, EarlyStop, check_best_checkpoint_config

NAN = float("nan")


class StubRun:
    """A trainer stand-in: ``model`` is one weight set to the iteration before every step;
    ``scores[iteration]`` is the bbox/AP that the evaluation after that iteration reports."""

    def __init__(self, out_dir, scores, max_iter=14, start_iter=0, period=2, patience=3, mode="max",
                 metric="bbox/AP"):
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.checkpointer = AnchorFreeCheckpointer(self.model, str(out_dir))
        self.scores = scores
        self.trainer = types.SimpleNamespace(iter=start_iter, max_iter=max_iter)
        self.hook = AnchorFreeBestCheckpointer(period, self.checkpointer, metric, mode=mode, patience=patience,
                                               latest_results=self.results)
        self.hook.trainer = self.trainer

    def results(self):
        it = min(self.trainer.iter, self.trainer.max_iter - 1)
        return {"bbox": {"AP": self.scores[it], "AP50": 0.5}}

    def train(self):
        """Returns the iteration at which EarlyStop was raised, or None after the last one."""
        self.hook.before_train()
        for self.trainer.iter in range(self.trainer.iter, self.trainer.max_iter):
            with torch.no_grad():
                self.model.weight.fill_(self.trainer.iter)
            try:
                self.hook.after_step()
            except EarlyStop:
                self.hook.after_train()
                return self.trainer.iter
        self.trainer.iter += 1
        self.hook.after_train()
        return None


def saved(out_dir, name):
    """(iteration, the weight = iteration whose weights these are) of a saved checkpoint."""
    ckpt = torch.load(os.path.join(out_dir, name), weights_only=True)
    return ckpt["iteration"], int(ckpt["model"]["weight"])


def state(out_dir):
    with open(os.path.join(out_dir, "best_checkpoint.json")) as f:
        return json.load(f)


# Evaluations after iterations 1, 3, 5, ... (period 2). Patience 3: 0.3 at 3 is the best; 5 (0.2),
# 7 (0.3, equal: not better) and 9 (0.25) do not improve -> stop after iteration 9.
# The last iteration, 13, is evaluated in after_train (as detectron2's EvalHook does).
SCORES = {1: 0.1, 3: 0.3, 5: 0.2, 7: 0.3, 9: 0.25, 11: 0.9, 13: 0.0}


def test_best_checkpoint_and_early_stop_hand_computed(tmp_path):
    run = StubRun(tmp_path, SCORES)
    assert run.train() == 9
    assert saved(tmp_path, "model_best.pth") == (3, 3)  # the weights of iteration 3
    assert saved(tmp_path, "model_final.pth") == (9, 9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"  # model_best is not resumed from
    s = state(tmp_path)
    assert s["evaluations"] == [[1, 0.1], [3, 0.3], [5, 0.2], [7, 0.3], [9, 0.25]]
    assert (s["best_value"], s["best_iteration"], s["evaluations_without_improvement"]) == (0.3, 3, 3)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_without_patience_the_run_ends_with_a_final_evaluation(tmp_path):
    """Patience 0: no stop; 0.9 after iteration 11 is the best; the last one (13) is recorded."""
    run = StubRun(tmp_path, SCORES, patience=0)
    assert run.train() is None
    assert saved(tmp_path, "model_best.pth") == (11, 11)
    assert state(tmp_path)["evaluations"] == [[it, v] for it, v in SCORES.items()]
    assert not (tmp_path / "model_final.pth").exists()  # written by the trainer's PeriodicCheckpointer, not here


def test_min_mode_and_non_finite_values(tmp_path):
    """mode min: the first value NaN never improves (counted without improvement, nothing saved);
    0.5, then 0.4 is better, 0.45 and inf are not -> stop after the 2nd evaluation since 0.4."""
    scores = {1: NAN, 3: 0.5, 5: 0.4, 7: 0.45, 9: math.inf}
    run = StubRun(tmp_path, scores, mode="min", patience=2)
    assert run.train() == 9
    assert saved(tmp_path, "model_best.pth") == (5, 5)
    s = state(tmp_path)
    assert (s["best_value"], s["best_iteration"], s["evaluations_without_improvement"]) == (0.4, 5, 2)


def test_resume_keeps_the_best_score_and_the_patience_counter(tmp_path):
    """A run resumed at iteration 6 (checkpoint after iteration 5) restores the evaluations after
    1, 3 and 5 (best 0.3 at 3, one without improvement), even though best_checkpoint.json also
    holds the later ones (7, 9: run again), and stops after iteration 9 as the straight run."""
    assert StubRun(tmp_path, SCORES).train() == 9
    resumed = StubRun(tmp_path, SCORES, start_iter=6)
    resumed.hook.before_train()
    assert (resumed.hook.best_metric, resumed.hook.best_iter, resumed.hook.evaluations_without_improvement) == (0.3, 3, 1)
    assert resumed.train() == 9
    assert state(tmp_path)["evaluations"] == [[1, 0.1], [3, 0.3], [5, 0.2], [7, 0.3], [9, 0.25]]
    assert saved(tmp_path, "model_best.pth") == (3, 3)


def test_resume_of_a_stopped_run_stops_before_training(tmp_path):
    assert StubRun(tmp_path, SCORES).train() == 9
    again = StubRun(tmp_path, SCORES, start_iter=10)
    with pytest.raises(EarlyStop, match=r"already stopped, bbox/AP did not improve in the last 3 evaluations"):
        again.hook.before_train()
    # A larger patience trains on: 0.9 after iteration 11 is the new best.
    assert StubRun(tmp_path, SCORES, start_iter=10, patience=5).train() is None
    assert saved(tmp_path, "model_best.pth") == (11, 11)


def test_resume_reads_model_best_when_the_json_missed_its_evaluation(tmp_path):
    """Killed between writing model_best.pth (after iteration 3) and best_checkpoint.json: the
    json ends at iteration 1, model_best.pth holds the history up to 3, which wins."""
    run = StubRun(tmp_path, {1: 0.1, 3: 0.3}, max_iter=4)
    run.train()
    s = state(tmp_path)
    s["evaluations"] = s["evaluations"][:1]
    (tmp_path / "best_checkpoint.json").write_text(json.dumps(s))
    resumed = StubRun(tmp_path, SCORES, start_iter=4)
    resumed.hook.before_train()
    assert (resumed.hook.best_metric, resumed.hook.best_iter) == (0.3, 3)


def test_files_of_an_earlier_run_in_the_folder_are_not_restored(tmp_path):
    """A new run in the folder of a finished one, resumed before its first evaluation, starts
    with no best score, although the old model_best.pth holds evaluations before that iteration."""
    assert StubRun(tmp_path, SCORES).train() == 9
    StubRun(tmp_path, SCORES).hook.before_train()  # the new run starts (then is killed)
    resumed = StubRun(tmp_path, SCORES, start_iter=6)
    resumed.hook.before_train()
    assert (resumed.hook.best_metric, resumed.hook.evaluations_without_improvement) == (None, 0)
    assert resumed.train() is None  # 7 (0.3) is its first best, 9 (0.25) not, 11 (0.9) better, 13 (0.0) not
    assert saved(tmp_path, "model_best.pth") == (11, 11)
    assert [e[0] for e in state(tmp_path)["evaluations"]] == [7, 9, 11, 13]


def test_a_metric_the_evaluation_does_not_produce_names_those_it_does(tmp_path):
    run = StubRun(tmp_path, SCORES, metric="bbox/mAP")
    with pytest.raises(ValueError, match=r"SOLVER.BEST_CHECKPOINT.METRIC = 'bbox/mAP' is not among the evaluation "
                                         r"results \['bbox/AP', 'bbox/AP50'\]"):
        run.train()


def make_cfg(*opts):
    cfg = get_cfg()
    d2_anchorfree.add_anchorfree_config(cfg)
    cfg.merge_from_list(["DATASETS.TEST", ("val",), "TEST.EVAL_PERIOD", 100, *opts])
    return cfg


@pytest.mark.parametrize("opts,message", [
    (["SOLVER.EARLY_STOP.PATIENCE", -1], r"SOLVER.EARLY_STOP.PATIENCE = -1: must be an integer >= 0"),
    (["SOLVER.BEST_CHECKPOINT.MODE", "maximum"], r"SOLVER.BEST_CHECKPOINT.MODE = 'maximum': must be \"max\""),
    (["SOLVER.EARLY_STOP.PATIENCE", 3, "TEST.EVAL_PERIOD", 0],
     r"SOLVER.EARLY_STOP.PATIENCE = 3 needs evaluations during training .* TEST.EVAL_PERIOD > 0 \(now 0\)"),
    (["SOLVER.EARLY_STOP.PATIENCE", 3, "DATASETS.TEST", ()], r"a DATASETS.TEST \(now \(\)\)"),
    (["SOLVER.EARLY_STOP.PATIENCE", 3, "SOLVER.BEST_CHECKPOINT.METRIC", ""], r"METRIC \(now ''\)"),
])
def test_bad_settings_fail_before_training(opts, message):
    with pytest.raises(ValueError, match=message):
        AnchorFreeTrainer(make_cfg(*opts))  # checked first, before the model and the datasets


def test_with_several_test_datasets_an_unprefixed_metric_is_the_first_ones():
    from d2_anchorfree.engine.hooks import best_checkpoint_metric

    assert best_checkpoint_metric(make_cfg("DATASETS.TEST", ("a", "b"))) == "a/bbox/AP"
    assert best_checkpoint_metric(make_cfg("DATASETS.TEST", ("a", "b"), "SOLVER.BEST_CHECKPOINT.METRIC", "b/bbox/AP50")) == "b/bbox/AP50"
    assert best_checkpoint_metric(make_cfg("SOLVER.BEST_CHECKPOINT.METRIC", "bbox/AP50")) == "bbox/AP50"


def test_good_settings_pass():
    check_best_checkpoint_config(make_cfg("SOLVER.EARLY_STOP.PATIENCE", 2, "SOLVER.BEST_CHECKPOINT.MODE", "min"))
    check_best_checkpoint_config(make_cfg("DATASETS.TEST", ("a", "b"), "SOLVER.BEST_CHECKPOINT.METRIC", "b/bbox/AP50"))
    check_best_checkpoint_config(make_cfg("DATASETS.TEST", ("a", "b")))  # watches a/bbox/AP
    check_best_checkpoint_config(make_cfg("TEST.EVAL_PERIOD", 0))  # best checkpoints off, nothing to check
