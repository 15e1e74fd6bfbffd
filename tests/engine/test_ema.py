"""Model EMA (d2_anchorfree.engine.ema): the update rule and its warm-up ramp against numbers
computed by hand, the config checks, and the checkpoint layout (``"model"`` = averaged weights
for every inference consumer, ``"model_raw"`` + ``"ema"`` for resuming). Training runs with EMA
(exact resume, evaluation of the averaged weights) are in tests/engine/test_train_net.py, the
2-process DDP run in tests/engine/test_ema_distributed.py."""
import math

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg

import d2_anchorfree
from d2_anchorfree.checkpoint import AnchorFreeCheckpointer, load_inference_weights
from d2_anchorfree.engine.ema import ModelEMA, check_model_ema_config, ema_decay


class TwoParams(nn.Module):
    """Two scalar weights, a float buffer (like BatchNorm's running mean) and an integer buffer
    (like ``num_batches_tracked``), in float64 so that hand-computed numbers compare at 1e-12."""

    def __init__(self, a, b, running=0.0, count=0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))
        self.register_buffer("running", torch.tensor(running, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(count))

    def set(self, a, b, running, count):
        with torch.no_grad():
            self.a.fill_(a)
            self.b.fill_(b)
            self.running.fill_(running)
            self.count.fill_(count)


def values(module):
    return [module.a.item(), module.b.item(), module.running.item(), module.count.item()]


def test_update_rule_with_warmup_hand_computed():
    """decay 0.9, warm-up tau 2; start a=1, b=-2, running=4.
    d1 = 0.9 (1 - e^-0.5) = 0.9 * 0.3934693403 = 0.3541224063
    step 1 -> a=3, b=0, running=6, count=1:
      a = d1 * 1 + (1 - d1) * 3 = 3 - 2 d1 = 2.2917551875;  b = -2 d1 = -0.7082448125
      running = 6 - 2 d1 = 5.2917551875;  count copied: 1
    d2 = 0.9 (1 - e^-1) = 0.9 * 0.6321205588 = 0.5689085029
    step 2 -> a=5, b=1, running=10, count=2:
      a = 5 - d2 (5 - 2.2917551875) = 3.4592564981;  b = 1 - d2 (1 + 0.7082448125) = 0.0281650010
      running = 10 - d2 (10 - 5.2917551875) = 7.3214394922;  count: 2"""
    model = TwoParams(1.0, -2.0, running=4.0)
    ema = ModelEMA(model, decay=0.9, warmup=2)
    model.set(3.0, 0.0, 6.0, 1)
    assert ema.update(model) == pytest.approx(0.3541224063, abs=1e-10)
    assert values(ema.module)[:3] == pytest.approx([2.2917551875, -0.7082448125, 5.2917551875], abs=1e-10)
    assert values(ema.module)[3] == 1
    model.set(5.0, 1.0, 10.0, 2)
    assert ema.update(model) == pytest.approx(0.5689085029, abs=1e-10)
    assert values(ema.module)[:3] == pytest.approx([3.4592564981, 0.0281650010, 7.3214394922], abs=1e-10)
    assert values(ema.module)[3] == 2 and ema.updates == 2
    assert values(model) == [5.0, 1.0, 10.0, 2]  # the trained model is left alone


def test_update_rule_without_warmup():
    """warm-up 0: decay 0.5 from the first update: a 1 -> (1 + 3) / 2 = 2 -> (2 + 5) / 2 = 3.5."""
    model = TwoParams(1.0, 0.0)
    ema = ModelEMA(model, decay=0.5, warmup=0)
    for a in (3.0, 5.0):
        model.set(a, 0.0, 0.0, 0)
        assert ema.update(model) == 0.5
    assert float(ema.module.a) == 3.5


def test_decay_ramp_equals_ultralytics_and_rtmdet():
    """Ultralytics ModelEMA: d = decay (1 - exp(-updates / tau)), tau 2000: at 2000 updates
    0.9999 (1 - 1/e) = 0.6320573; MMDetection's ExpMomentumEMA (RTMDet) averages with momentum
    (1 - m) exp(-(1 + steps) / gamma) + m, i.e. decay 1 - momentum at update steps + 1."""
    assert ema_decay(2000, 0.9999, 2000) == pytest.approx(0.6320573, abs=1e-7)
    assert ema_decay(10**6, 0.9998, 2000) == 0.9998
    m, gamma = 0.0002, 2000
    for steps in (0, 1, 99, 1999, 20000):
        momentum = (1 - m) * math.exp(-(1 + steps) / gamma) + m
        assert ema_decay(steps + 1, 1 - m, gamma) == pytest.approx(1 - momentum, rel=1e-12)


def test_ema_of_a_ddp_like_wrapper_averages_the_inner_module():
    """A wrapper with ``.module`` (DDP): the copy and the update use the inner module (keys
    without "module.")."""
    inner = TwoParams(1.0, 2.0)
    wrapper = nn.Module()
    wrapper.module = inner
    ema = ModelEMA(wrapper, decay=0.5, warmup=0)
    assert set(ema.module.state_dict()) == {"a", "b", "running", "count"}
    inner.set(3.0, 2.0, 0.0, 0)
    ema.update(wrapper)
    assert float(ema.module.a) == 2.0
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def cfg_with(*opts):
    cfg = get_cfg()
    d2_anchorfree.add_anchorfree_config(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def test_defaults():
    ema = cfg_with().MODEL_EMA
    assert (ema.ENABLED, ema.DECAY, ema.WARMUP) == (False, 0.9998, 2000)
    check_model_ema_config(cfg_with())


@pytest.mark.parametrize("opts, message", [
    (("MODEL_EMA.DECAY", "1.0"), "MODEL_EMA.DECAY = 1.0: must be a number in (0, 1)"),
    (("MODEL_EMA.DECAY", "0.0"), "MODEL_EMA.DECAY = 0.0: must be a number in (0, 1)"),
    (("MODEL_EMA.DECAY", "1.5"), "MODEL_EMA.DECAY = 1.5"),
    (("MODEL_EMA.DECAY", "-0.1"), "MODEL_EMA.DECAY = -0.1"),
    (("MODEL_EMA.WARMUP", "-1"), "MODEL_EMA.WARMUP = -1: must be a finite number >= 0"),
    (("MODEL_EMA.ENABLED", "True", "TEST.PRECISE_BN.ENABLED", "True"), "TEST.PRECISE_BN.ENABLED"),
])
def test_bad_config_names_key_and_value(opts, message):
    with pytest.raises(ValueError) as e:
        check_model_ema_config(cfg_with(*opts))
    assert message in str(e.value)


def test_enabled_must_be_a_bool():
    cfg = cfg_with()
    cfg.MODEL_EMA.ENABLED = "yes"
    with pytest.raises(ValueError, match="MODEL_EMA.ENABLED = 'yes'"):
        check_model_ema_config(cfg)


def trained_pair():
    """A model trained to a=5, b=1 and its average after two updates (3.4592564981, 0.0281650010)."""
    model = TwoParams(1.0, -2.0, running=4.0)
    ema = ModelEMA(model, decay=0.9, warmup=2)
    for a, b, running, count in ((3.0, 0.0, 6.0, 1), (5.0, 1.0, 10.0, 2)):
        model.set(a, b, running, count)
        ema.update(model)
    return model, ema


def test_checkpoint_layout_and_inference_consumers(tmp_path):
    """"model" holds the average, "model_raw" the trained weights, "ema" the update count; an
    inference load (load_inference_weights, --eval-only --resume, detectron2's checkpointer) gets
    the average and does not return "model_raw"."""
    model, ema = trained_pair()
    AnchorFreeCheckpointer(model, str(tmp_path), ema=ema, training=True).save("model_final", iteration=1)
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert float(saved["model"]["a"]) == pytest.approx(3.4592564981, abs=1e-10)
    assert float(saved["model_raw"]["a"]) == 5.0
    assert saved["ema"] == {"updates": 2, "decay": 0.9, "warmup": 2.0}
    for resume_dir, weights in (("", str(tmp_path / "model_final.pth")), (str(tmp_path), "")):
        fresh = TwoParams(0.0, 0.0)
        extra = load_inference_weights(fresh, weights, resume_dir=resume_dir)
        assert values(fresh)[:2] == pytest.approx([3.4592564981, 0.0281650010], abs=1e-10)
        assert "model_raw" not in extra and extra["iteration"] == 1


def test_resume_restores_trained_weights_and_average(tmp_path):
    """Resuming (training=True): the model gets "model_raw", the EMA "model" and the update count;
    a later update continues exactly as without the interruption. Without EMA in the resumed run
    the model still gets the trained weights, not the average."""
    model, ema = trained_pair()
    AnchorFreeCheckpointer(model, str(tmp_path), ema=ema, training=True).save("model_0000001")
    resumed_model = TwoParams(0.0, 0.0)
    resumed_ema = ModelEMA(resumed_model, decay=0.9, warmup=2)
    AnchorFreeCheckpointer(resumed_model, str(tmp_path), ema=resumed_ema, training=True).resume_or_load("", resume=True)
    assert values(resumed_model) == values(model)
    assert values(resumed_ema.module) == values(ema.module) and resumed_ema.updates == 2
    for m in (model, resumed_model):
        m.set(7.0, 1.0, 10.0, 3)
    ema.update(model)
    resumed_ema.update(resumed_model)
    assert values(resumed_ema.module) == values(ema.module)

    plain = TwoParams(0.0, 0.0)
    AnchorFreeCheckpointer(plain, str(tmp_path), training=True).resume_or_load("", resume=True)
    assert values(plain)[:2] == [5.0, 1.0]
    initial = TwoParams(0.0, 0.0)  # a new run's MODEL.WEIGHTS: the average
    AnchorFreeCheckpointer(initial, str(tmp_path / "new"), training=True).resume_or_load(
        str(tmp_path / "model_0000001.pth"), resume=True)
    assert initial.a.item() == pytest.approx(3.4592564981, abs=1e-10)
