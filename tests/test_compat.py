"""detectron2 version differences (d2_anchorfree.compat) and the COCO evaluation backends.

Runs on detectron2 v0.6 (``make test``) and on main with ``detectron2._C`` (``make test-d2main``,
which sets D2AF_EXPECT_D2MAIN=1 so that a run that silently got v0.6 fails here)."""
import json
import os

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import SimpleTrainer, TrainerBase
from detectron2.evaluation import coco_evaluation
from detectron2.structures import Boxes, BoxMode, Instances

from d2_anchorfree import compat
from d2_anchorfree.engine.trainer import AnchorFreeTrainer
from d2_anchorfree.evaluation import AnchorFreeCOCOEvaluator

from benchmarks import cocoeval as bench

HAS_C = compat.detectron2_has_C()


def test_expected_detectron2_is_imported():
    import detectron2

    if os.environ.get("D2AF_EXPECT_D2MAIN") == "1":
        assert HAS_C, "make test-d2main must run on a detectron2 with its compiled ops"
        assert compat.amp_trainer_takes_precision()
        assert "d2main-" in detectron2.__file__, detectron2.__file__
    assert compat.coco_eval_backend(100) == ("detectron2_C" if HAS_C else "faster_coco_eval")
    assert compat.coco_eval_backend(300) == "faster_coco_eval"  # detectron2 uses pycocotools there


# --- trainer state: the same checkpoints on v0.6 and main

def _bare_trainer():
    """An AnchorFreeTrainer with only what (load_)state_dict touch: hooks and an SGD loop."""
    trainer = AnchorFreeTrainer.__new__(AnchorFreeTrainer)
    TrainerBase.__init__(trainer)
    model = torch.nn.Linear(2, 1)
    trainer._trainer = SimpleTrainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    return trainer, model


def test_trainer_state_round_trip_keeps_momentum_and_reads_plain_checkpoints():
    trainer, model = _bare_trainer()
    model(torch.ones(1, 2)).sum().backward()
    trainer._trainer.optimizer.step()
    trainer.iter = 7
    state = trainer.state_dict()
    assert state["iteration"] == 7 and "optimizer" in state["_trainer"]

    other, _ = _bare_trainer()
    other.load_state_dict(state)
    assert other.iter == 7
    momentum = other._trainer.optimizer.state_dict()["state"][0]["momentum_buffer"]
    torch.testing.assert_close(momentum, trainer._trainer.optimizer.state_dict()["state"][0]["momentum_buffer"])

    plain, _ = _bare_trainer()  # written by a plain v0.6 DefaultTrainer: no "_trainer"
    plain.load_state_dict({"iteration": 3})  # detectron2 main's DefaultTrainer raises KeyError
    assert plain.iter == 3 and plain._trainer.optimizer.state_dict()["state"] == {}


def test_replace_train_loader_takes_effect_on_next_step():
    model = torch.nn.Linear(2, 1)
    loop = SimpleTrainer(model, [1, 2], torch.optim.SGD(model.parameters(), lr=0.1))
    assert next(loop._data_loader_iter) == 1
    compat.replace_train_loader(loop, [5, 6])
    assert loop.data_loader == [5, 6]
    assert next(loop._data_loader_iter) == 5 and next(loop._data_loader_iter) == 6


def test_set_amp_precision():
    from detectron2.engine import AMPTrainer

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sgd = SimpleTrainer(model, [], opt)
    compat.set_amp_precision(sgd, "bfloat16")  # not AMP: nothing to do
    assert not hasattr(sgd, "precision")
    amp = AMPTrainer.__new__(AMPTrainer)  # the constructor needs CUDA's GradScaler on v0.6
    if compat.amp_trainer_takes_precision():
        compat.set_amp_precision(amp, "bfloat16")
        assert amp.precision == torch.bfloat16
    else:
        with pytest.raises(ValueError, match="bfloat16"):
            compat.set_amp_precision(amp, "bfloat16")
    with pytest.raises(ValueError, match="float64"):
        compat.set_amp_precision(amp, "float64")


# --- COCO evaluation: every backend gives pycocotools' numbers (equality, not timing)

@pytest.fixture(scope="module")
def synthetic():
    return bench.make_synthetic_coco(num_images=60, num_classes=5, dets_per_image=30, seed=3)


@pytest.mark.parametrize("max_dets", [(1, 10, 100), (1, 10, 300), (1, 5, 20)])
def test_faster_coco_eval_equals_pycocotools(synthetic, max_dets):
    gt, dets = synthetic
    ref = bench.run_one("pycocotools", gt, dets, max_dets)
    fast = bench.run_one("faster_coco_eval", gt, dets, max_dets)
    assert 0.05 < ref[0][0] < 0.95  # a non-trivial AP, so that equality means something
    assert max(bench.compare(ref, fast)) <= 1e-6, bench.compare(ref, fast)


@pytest.mark.d2main
@pytest.mark.skipif(not HAS_C, reason="detectron2._C not importable (detectron2 v0.6 Python sources)")
def test_detectron2_C_cocoeval_equals_pycocotools(synthetic):
    gt, dets = synthetic
    ref = bench.run_one("pycocotools", gt, dets, (1, 10, 100))
    fast = bench.run_one("detectron2_C", gt, dets, (1, 10, 100))
    assert max(bench.compare(ref, fast)) <= 1e-6, bench.compare(ref, fast)


def test_synthetic_data_is_deterministic_and_checked():
    a = bench.make_synthetic_coco(3, 2, 4, seed=1)
    assert a == bench.make_synthetic_coco(3, 2, 4, seed=1)
    assert len(a[1]) == 12
    with pytest.raises(ValueError, match="dets_per_image"):
        bench.make_synthetic_coco(3, 2, 0)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, synthetic):
    """The synthetic ground truth as a registered COCO dataset (contiguous ids 0..4)."""
    gt, dets = synthetic
    path = tmp_path_factory.mktemp("coco") / "gt.json"
    path.write_text(json.dumps(gt))
    name = "d2af_test_compat_synthetic"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(path), str(path.parent))
    DatasetCatalog.get(name)  # loads the json, sets thing_dataset_id_to_contiguous_id
    return name, dets


def _evaluate(name, dets, backend, max_dets):
    evaluator = AnchorFreeCOCOEvaluator(name, backend=backend, tasks=("bbox",), distributed=False,
                                        max_dets_per_image=max_dets)
    id_map = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    by_image = {}
    for d in dets:
        by_image.setdefault(d["image_id"], []).append(d)
    evaluator.reset()
    for image_id, ds in sorted(by_image.items()):
        inst = Instances((640, 640))
        xywh = torch.tensor([d["bbox"] for d in ds], dtype=torch.float64)
        inst.pred_boxes = Boxes(BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS).float())
        inst.scores = torch.tensor([d["score"] for d in ds])
        inst.pred_classes = torch.tensor([id_map[d["category_id"]] for d in ds])
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    return evaluator.evaluate()["bbox"]


@pytest.mark.parametrize("max_dets", [100, 300])
def test_evaluator_backends_report_the_same_metrics(registered, max_dets):
    name, dets = registered
    original = coco_evaluation._evaluate_predictions_on_coco
    ref = _evaluate(name, dets, "pycocotools", max_dets)
    fast = _evaluate(name, dets, "faster_coco_eval", max_dets)
    assert coco_evaluation._evaluate_predictions_on_coco is original  # restored after use
    assert ref.keys() == fast.keys() and "AP-class1" in ref and 5 < ref["AP"] < 95
    for key in ref:
        assert abs(ref[key] - fast[key]) <= 1e-4, (key, ref[key], fast[key])  # AP in percent
    if HAS_C:
        c = _evaluate(name, dets, "detectron2_C", max_dets)
        for key in ref:
            assert abs(ref[key] - c[key]) <= 1e-4, (key, ref[key], c[key])


def test_evaluator_rejects_unknown_backend(registered):
    with pytest.raises(ValueError, match="'cocoapi'"):
        AnchorFreeCOCOEvaluator(registered[0], backend="cocoapi", distributed=False)
    if not HAS_C:
        with pytest.raises(ValueError, match="detectron2._C"):
            AnchorFreeCOCOEvaluator(registered[0], backend="detectron2_C", distributed=False)
