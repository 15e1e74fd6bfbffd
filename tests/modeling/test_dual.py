"""Dual assignment (YOLOv10 Sec. 3.1) as a composition: hand-computed consistent matching, the
one-to-one branch's detached inputs, inference from one branch, export without NMS, and the
compositions that must be refused."""
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from d2_anchorfree.modeling.assigners.tal import TaskAlignedAssigner
from d2_anchorfree.modeling.criterion import DenseCriterion, DualCriterion
from d2_anchorfree.modeling.geometry import Points, boxes_to_ltrb, ltrb_to_boxes
from d2_anchorfree.modeling.heads import ClassScores, DenseOutputs

from conftest import load_cfg, make_batch, make_instances

DUAL = "configs/compositions/GFL_Dual_tiny_R_18_cpu.yaml"
DUAL_TAL = "configs/compositions/GFL_Dual_TAL_tiny_R_18_cpu.yaml"

# ------------------------------------------------------------------ matching, by hand
# One level (stride 8), four points inside one GT [0, 0, 32, 16] (class 0, area 512 px^2).
POINTS = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0]])
GT = [[0.0, 0.0, 32.0, 16.0]]


def outputs(scores, ious):
    """DenseOutputs of one image: probability ``scores[i]`` of class 0 at point i, and a predicted
    box [0, 0, 32, 16 * iou] (inside the GT, so its IoU with the GT is ``ious[i]``)."""
    boxes = torch.tensor([[0.0, 0.0, 32.0, 16.0 * u] for u in ious])
    probs = torch.tensor(scores, dtype=torch.float32)[None, :, None]
    return DenseOutputs(torch.logit(probs), boxes_to_ltrb(POINTS, boxes)[None], {},
                        ClassScores.from_probabilities(probs))


def dual_criterion(match_on: str, o2m_topk: int = 2) -> DualCriterion:
    tal = dict(strides=[8], alpha=1.0, beta=6.0)
    o2m = DenseCriterion(num_classes=1, assigner=TaskAlignedAssigner(topk=o2m_topk, **tal), loss_terms=[])
    o2o = DenseCriterion(num_classes=1, assigner=TaskAlignedAssigner(topk=1, **tal), loss_terms=[],
                         scalar_prefix="dense_o2o")
    return DualCriterion(one_to_many=o2m, one_to_one=o2o, match_on=match_on)


# The one-to-many branch scores [0.2, 0.9, 0.5, 0.7] with box IoUs [1, 0.8, 1, 0.9]:
# t = s * u^6 = [0.2, 0.9 * 0.262144 = 0.2359, 0.5, 0.7 * 0.531441 = 0.3720] -> top-2 = points
# {2, 3}; its best point is 2 (not point 1, the highest score). The one-to-one branch's own
# predictions, scores [0.8, 0.1, 0.3, 0.2] with perfect boxes, rank point 0 first.
O2M = outputs([0.2, 0.9, 0.5, 0.7], [1.0, 0.8, 1.0, 0.9])
O2O = outputs([0.8, 0.1, 0.3, 0.2], [1.0, 1.0, 1.0, 1.0])


def positives(targets):
    return targets.main.pos[0].nonzero()[:, 0].tolist()


def test_one_to_one_positive_is_the_one_to_many_best_when_matched_on_it():
    crit = dual_criterion("one_to_many")
    points = Points.from_levels([POINTS], [8])
    gt = [make_instances((16, 32), GT, [0])]
    o2m_targets = crit.one_to_many.build_targets(points, gt, O2M)
    o2o_targets = crit.one_to_one_targets({"one_to_many": O2M, "one_to_one": O2O}, points, gt)
    assert positives(o2m_targets) == [2, 3]
    assert positives(o2o_targets) == [2]  # the one-to-many branch's top-1 by the shared metric
    # TAL's normalized target at a GT's only positive is t / (t + 1e-7) * IoU = IoU (here 1).
    assert o2o_targets.quality[0].tolist() == pytest.approx([0, 0, 1.0, 0], abs=1e-6)


def test_one_to_one_ranks_its_own_predictions_by_default_as_yolov10():
    crit = dual_criterion("own")
    points = Points.from_levels([POINTS], [8])
    gt = [make_instances((16, 32), GT, [0])]
    o2o_targets = crit.one_to_one_targets({"one_to_many": O2M, "one_to_one": O2O}, points, gt)
    assert positives(o2o_targets) == [0]


@pytest.mark.parametrize("second_gt, expected", [
    # GT 1 [0, 0, 32, 14.4] (460.8 px^2): IoUs of the predicted boxes [0.9, 0.889, 0.9, 1.0],
    # t = [0.106, 0.444, 0.266, 0.7] -> its top-1 is point 3; GT 0's is point 2.
    ([0.0, 0.0, 32.0, 14.4], [-1, -1, 0, 1]),
    # A duplicate GT has the same top-1 (point 2): the point goes to one GT (TAL rule 4, IoU tie ->
    # lowest index) and the other GT gets no positive, never two.
    ([0.0, 0.0, 32.0, 16.0], [-1, -1, 0, -1]),
])
def test_one_to_one_gives_each_gt_at_most_one_positive(second_gt, expected):
    crit = dual_criterion("one_to_many", o2m_topk=4)
    points = Points.from_levels([POINTS], [8])
    gt = [make_instances((16, 32), GT + [second_gt], [0, 0])]
    pred_boxes = ltrb_to_boxes(POINTS, O2M.ltrb[0])[None]
    matched, _ = crit.one_to_one.assign(crit.one_to_one.assigner, points, gt, O2M.scores.probabilities, pred_boxes)
    matched = matched[0]
    assert matched.tolist() == expected


def test_one_to_few_warm_up_then_one_to_one():
    """MODEL.DUAL.ONE_TO_ONE_INITIAL_TOPK 2 for 3 iterations, on the one-to-one branch's own
    predictions (scores [0.8, 0.1, 0.3, 0.2], perfect boxes: t = s): iterations 0-2 take points
    {0, 2}, TAL's soft targets t / max t * max IoU = [1, 0, 0.3 / 0.8, 0]; from iteration 3 the top-1
    alone, target 1."""
    crit = dual_criterion("own")
    crit.one_to_one = DenseCriterion(
        num_classes=1, assigner=crit.one_to_one.assigner, loss_terms=[], scalar_prefix="dense_o2o",
        initial_assigner=TaskAlignedAssigner(topk=2, strides=[8], alpha=1.0, beta=6.0), initial_assigner_iters=3)
    points = Points.from_levels([POINTS], [8])
    gt = [make_instances((16, 32), GT, [0])]
    outs = {"one_to_many": O2M, "one_to_one": O2O}
    crit.set_iteration(2)
    few = crit.one_to_one_targets(outs, points, gt)
    assert crit.one_to_one.phase.name == "initial" and positives(few) == [0, 2]
    assert few.quality[0].tolist() == pytest.approx([1.0, 0, 0.375, 0], abs=1e-6)
    crit.set_iteration(3)
    one = crit.one_to_one_targets(outs, points, gt)
    assert crit.one_to_one.phase.name == "main" and positives(one) == [0]
    assert one.quality[0].tolist() == pytest.approx([1.0, 0, 0, 0], abs=1e-6)


def test_one_to_few_warm_up_from_the_config():
    model = dual_model("MODEL.DUAL.ONE_TO_ONE_INITIAL_TOPK", 4, "MODEL.DUAL.ONE_TO_ONE_INITIAL_ITERS", 100)
    o2o = model.criterion.one_to_one
    assert (o2o.initial_assigner.topk, o2o.initial_assigner_iters, o2o.assigner.topk) == (4, 100, 1)
    assert (o2o.initial_assigner.alpha, o2o.initial_assigner.beta) == (o2o.assigner.alpha, o2o.assigner.beta)
    assert model.criterion.one_to_many.initial_assigner is None  # the one-to-many branch is untouched
    assert dual_model().criterion.one_to_one.initial_assigner is None  # off by default


def test_one_to_one_qfl_beta_from_the_config():
    # 0.0: YOLOv10's plain BCE on the IoU target in the one-to-one branch; the other branch keeps
    # MODEL.QFL.BETA (the GFL paper's 2)
    def qfl_betas(model):
        return [[t.beta for t in branch.loss_terms if type(t).__name__ == "QualityFocalLoss"]
                for branch in (model.criterion.one_to_many, model.criterion.one_to_one)]

    assert qfl_betas(dual_model("MODEL.DUAL.ONE_TO_ONE_QFL_BETA", 0.0)) == [[2.0], [0.0]]
    assert qfl_betas(dual_model()) == [[2.0], [2.0]]  # None: MODEL.QFL.BETA in both


# ------------------------------------------------------------------ the detector
def dual_model(*opts, config=DUAL):
    torch.manual_seed(0)
    return build_model(load_cfg(config, *opts))


def test_dual_detector_trains_both_branches_and_names_the_one_to_one_losses():
    model = dual_model()
    model.train()
    with EventStorage() as storage:
        losses = model(make_batch(128, 160))
        scalars = storage.latest()
    assert set(losses) == {"loss_cls", "loss_box", "loss_dfl", "loss_cls_o2o", "loss_box_o2o", "loss_dfl_o2o"}
    assert all(torch.isfinite(v) for v in losses.values())
    # two GTs, one one-to-one positive each at most; ATSS gives the one-to-many branch several
    assert scalars["dense_o2o/num_pos_per_gt"][0] <= 1.0 < scalars["dense/num_pos_per_gt"][0]


@pytest.mark.parametrize("towers", ["separate", "shared"])
def test_one_to_one_gradient_stays_in_its_own_layers(towers):
    # YOLOv10's v10Detect detaches the one-to-one inputs: its losses train only its own layers.
    model = dual_model("MODEL.DUAL.TOWERS", towers)
    model.train()
    with EventStorage():
        losses = model(make_batch(128, 160))
    sum(v for k, v in losses.items() if k.endswith("_o2o")).backward()
    touched = {n.split(".")[0] if not n.startswith("head.") else ".".join(n.split(".")[:2])
               for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched == {"head.one_to_one"}
    if towers == "shared":
        assert model.head.one_to_one.cls_tower is None  # it predicts from the one-to-many towers


def test_without_detach_the_one_to_one_loss_reaches_the_backbone():
    model = dual_model("MODEL.DUAL.DETACH", False)
    model.train()
    with EventStorage():
        losses = model(make_batch(128, 160))
    sum(v for k, v in losses.items() if k.endswith("_o2o")).backward()
    assert model.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0


def test_inference_runs_one_branch_and_the_other_is_ignored():
    model = dual_model("MODEL.DENSE.SCORE_THRESH_TEST", 0.0)
    model.eval()
    image = make_batch(128, 160)[0]["image"]
    with torch.no_grad():
        before = model([{"image": image}])[0]["instances"]
        for p in model.head.one_to_many.parameters():
            p.fill_(float("nan"))  # the one-to-many branch is not computed at inference
        after = model([{"image": image}])[0]["instances"]
    assert model.test_nms_thresh is None and len(before) > 0  # NMS-free
    assert torch.equal(before.pred_boxes.tensor, after.pred_boxes.tensor) and torch.equal(before.scores, after.scores)


def test_one_to_many_branch_with_nms_is_a_plain_gfl_head():
    # INFERENCE_BRANCH "one_to_many" + NMS: the same detections as a GFL detector holding the
    # one-to-many branch's weights.
    low = ["MODEL.DENSE.SCORE_THRESH_TEST", 0.0]  # untrained: every score is about the 0.01 prior
    dual = dual_model("MODEL.DUAL.INFERENCE_BRANCH", "one_to_many", "MODEL.DENSE.POSTPROCESS", "nms", *low)
    gfl = build_model(load_cfg("configs/GFL/GFL_tiny_R_18_cpu.yaml", *low))
    state = {k.replace("head.one_to_many.", "head."): v for k, v in dual.state_dict().items()
             if not k.startswith("head.one_to_one.")}
    gfl.load_state_dict(state)
    image = make_batch(128, 160)[0]["image"]
    dual.eval(), gfl.eval()
    with torch.no_grad():
        a, b = (m([{"image": image}])[0]["instances"] for m in (dual, gfl))
    assert len(a) > 0 and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)


def test_poto_as_the_one_to_one_rule():
    model = dual_model("MODEL.DUAL.ONE_TO_ONE_ASSIGNER", "POTOAssigner", "MODEL.DENSE.CENTER_SAMPLING_RADIUS", 1.5,
                       "MODEL.TAL.ALPHA", 1.0)  # the YAML's TAL exponent is unused with POTO
    assert type(model.criterion.one_to_one.assigner).__name__ == "POTOAssigner"
    model.train()
    with EventStorage():
        losses = model(make_batch(128, 160))
    assert torch.isfinite(sum(losses.values()))


def test_consistent_tal_config_uses_one_metric_for_both_branches():
    model = dual_model(config=DUAL_TAL)
    o2m, o2o = model.criterion.one_to_many.assigner, model.criterion.one_to_one.assigner
    assert (o2m.topk, o2o.topk) == (10, 1) and (o2m.alpha, o2m.beta) == (o2o.alpha, o2o.beta) == (0.5, 6.0)


# ------------------------------------------------------------------ refused compositions
@pytest.mark.parametrize("opts, message", [
    (["MODEL.DUAL.ONE_TO_ONE_ASSIGNER", "ATSSAssigner"], r"ONE_TO_ONE_ASSIGNER 'ATSSAssigner' gives a GT several"),
    (["MODEL.DUAL.ONE_TO_ONE_ASSIGNER", "none"], r"needs a one-to-one assigner in MODEL\.DUAL\.ONE_TO_ONE_ASSIGNER"),
    (["MODEL.DUAL.ONE_TO_ONE_TOPK", 10], r"ONE_TO_ONE_TOPK must be 1 .* got 10"),
    (["MODEL.DUAL.INFERENCE_BRANCH", "one_to_many"], r"POSTPROCESS 'topk' \(NMS-free\) needs a branch trained one-to-one"),
    (["MODEL.DUAL.INFERENCE_BRANCH", "both"], r"INFERENCE_BRANCH must be one of"),
    (["MODEL.DUAL.TOWERS", "half"], r"TOWERS must be one of"),
    (["MODEL.DUAL.MATCH_ON", "other"], r"MATCH_ON must be one of"),
    (["MODEL.DUAL.ONE_TO_ONE_WEIGHT", 0.0], r"ONE_TO_ONE_WEIGHT must be > 0"),
    (["MODEL.DUAL.ONE_TO_ONE_QFL_BETA", -1.0], r"ONE_TO_ONE_QFL_BETA must be a number >= 0, got -1.0"),
    (["MODEL.DUAL.ONE_TO_ONE_QFL_BETA", 0.0, "MODEL.DUAL.ONE_TO_ONE_LOSSES", ["FocalLoss", "BoxLoss"]],
     r"ONE_TO_ONE_QFL_BETA = 0.0 is set but the one-to-one losses .*\['FocalLoss', 'BoxLoss'\]\) have no QualityFocalLoss"),
    (["MODEL.DENSE.AUX_ASSIGNER", "POTOAuxAssigner"], r"MODEL\.DUAL with MODEL\.DENSE\.AUX_ASSIGNER"),
    (["MODEL.DUAL.ONE_TO_ONE_INITIAL_TOPK", 4], r"INITIAL_TOPK = 4 with ONE_TO_ONE_INITIAL_ITERS = 0: .* needs both"),
    (["MODEL.DUAL.ONE_TO_ONE_INITIAL_ITERS", 100], r"INITIAL_TOPK = 1 with ONE_TO_ONE_INITIAL_ITERS = 100"),
    (["MODEL.DUAL.ONE_TO_ONE_INITIAL_TOPK", 0], r"ONE_TO_ONE_INITIAL_TOPK must be a whole number >= 1, got 0"),
    (["MODEL.DUAL.ONE_TO_ONE_INITIAL_ITERS", -5], r"ONE_TO_ONE_INITIAL_ITERS must be a whole number >= 0, got -5"),
    (["MODEL.DUAL.ONE_TO_ONE_ASSIGNER", "POTOAssigner", "MODEL.DENSE.CENTER_SAMPLING_RADIUS", 1.5,
      "MODEL.DUAL.ONE_TO_ONE_INITIAL_TOPK", 4, "MODEL.DUAL.ONE_TO_ONE_INITIAL_ITERS", 100],
     r"ONE_TO_ONE_ASSIGNER 'POTOAssigner' has none; use 'TaskAlignedAssigner'"),
])
def test_bad_dual_compositions_are_refused(opts, message):
    with pytest.raises(ValueError, match=message):
        dual_model(*opts)


def test_nms_free_postprocessing_on_a_one_to_many_detector_is_refused():
    with pytest.raises(ValueError, match=r"POSTPROCESS 'topk' .* ATSSAssigner \(one-to-many\)"):
        build_model(load_cfg("configs/GFL/GFL_tiny_R_18_cpu.yaml", "MODEL.DENSE.POSTPROCESS", "topk"))


def test_shared_towers_need_a_head_with_towers():
    with pytest.raises(ValueError, match=r"TOWERS 'shared' needs a head with cls/box towers; TOODHead"):
        build_model(load_cfg("configs/TOOD/TOOD_tiny_R_18_cpu.yaml", "MODEL.DUAL.ENABLED", True,
                             "MODEL.DUAL.TOWERS", "shared", "MODEL.DENSE.POSTPROCESS", "topk"))


def test_poto_ignores_the_tal_top_k_key_so_setting_it_is_an_error():
    # MODEL.DUAL.ONE_TO_ONE_TOPK only means something for a rule with a top-k.
    with pytest.raises(ValueError, match=r"MODEL\.DUAL\.ONE_TO_ONE_TOPK"):
        dual_model("MODEL.DUAL.ONE_TO_ONE_ASSIGNER", "POTOAssigner", "MODEL.DENSE.CENTER_SAMPLING_RADIUS", 1.5,
                   "MODEL.TAL.ALPHA", 1.0,
                   "MODEL.DUAL.ONE_TO_ONE_TOPK", 2)
