import math

import pytest
import torch
from torch import nn

from afov_ray.train.checkpoint import load_checkpoint, save_checkpoint
from afov_ray.train.optim import CosineSchedule, OptimConfig, build_optimizer, freeze_for_linear_probe


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4, bias=False)
        self.bn = nn.BatchNorm1d(4)
        self.final = nn.Linear(4, 2)

    def forward(self, x):
        return self.final(self.bn(self.body(x)))


def test_two_groups_and_dampening():
    m = Tiny()
    opt = build_optimizer(m, OptimConfig(lr=0.02, lr_head=2.0, weight_decay=1e-4, weight_decay_head=None))
    names = [g["name"] for g in opt.param_groups]
    assert names == ["body", "head"]
    assert opt.param_groups[0]["lr"] == 0.02 and opt.param_groups[1]["lr"] == 2.0
    assert len(opt.param_groups[1]["params"]) == 2  # final.weight, final.bias
    assert opt.param_groups[1]["weight_decay"] == 1e-4
    assert opt.defaults["dampening"] == 0.1 and opt.defaults["momentum"] == 0.9
    single = build_optimizer(m, OptimConfig(lr=0.05, lr_head=None))
    assert len(single.param_groups) == 1 and single.param_groups[0]["lr"] == 0.05


def test_adamw_option_keeps_groups_and_rejects_unknown():
    opt = build_optimizer(Tiny(), OptimConfig(optimizer="adamw", lr=1e-3, lr_head=1e-2, weight_decay=0.01))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["name"] for g in opt.param_groups] == ["body", "head"]
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]
    assert opt.param_groups[0]["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="optim.optimizer"):
        build_optimizer(Tiny(), OptimConfig(optimizer="lamb"))


def test_sgd_dampening_update_matches_hand_computation():
    p = nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.0)
    for g in (1.0, 2.0):
        opt.zero_grad(); p.grad = torch.tensor([g]); opt.step()
    # step 1: buf = g1 = 1 (first step: no dampening) -> p = 1 - 0.1 = 0.9
    # step 2: buf = 0.9*1 + (1-0.1)*2 = 2.7 -> p = 0.9 - 0.27 = 0.63
    assert p.item() == pytest.approx(0.63)


def test_cosine_per_epoch_matches_formula_and_torch():
    m = Tiny()
    opt = build_optimizer(m, OptimConfig(lr=0.02, lr_head=2.0))
    sch = CosineSchedule(opt, num_epochs=5)
    ref_opt = build_optimizer(Tiny(), OptimConfig(lr=0.02, lr_head=2.0))
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=5)
    for e in range(5):
        assert sch.lrs()[0] == pytest.approx(0.02 * (1 + math.cos(math.pi * e / 5)) / 2)
        assert sch.lrs() == pytest.approx([g["lr"] for g in ref_opt.param_groups])
        for _ in range(3):
            sch.step_iteration()  # no effect per epoch
        sch.step_epoch(); ref_opt.step(); ref.step()
    assert sch.lrs()[0] == pytest.approx(0.0, abs=1e-12)


def test_cosine_per_iteration_and_state_roundtrip():
    opt = build_optimizer(Tiny(), OptimConfig(lr=1.0, lr_head=None))
    sch = CosineSchedule(opt, num_epochs=2, steps_per_epoch=4, per_iteration=True)
    for _ in range(4):
        sch.step_iteration()
    assert sch.lrs()[0] == pytest.approx(0.5)
    state = sch.state_dict()
    opt2 = build_optimizer(Tiny(), OptimConfig(lr=1.0, lr_head=None))
    sch2 = CosineSchedule(opt2, num_epochs=2, steps_per_epoch=4, per_iteration=True)
    sch2.load_state_dict(state)
    assert sch2.lrs() == pytest.approx(sch.lrs())


def test_linear_probe_freezes_all_but_head():
    m = Tiny()
    trainable = freeze_for_linear_probe(m)
    assert trainable == ["final.weight", "final.bias"]
    assert not m.body.weight.requires_grad and not m.bn.weight.requires_grad
    opt = build_optimizer(m, OptimConfig(lr=0.05, lr_head=None))
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 4 * 2 + 2


def test_checkpoint_roundtrip_weights_only(tmp_path):
    m = Tiny()
    opt = build_optimizer(m, OptimConfig())
    save_checkpoint(tmp_path / "c", model_state=m.state_dict(), optimizer_state=opt.state_dict(),
                    epoch=3, step=17, config={"a": 1}, metrics={"loss": 0.5})
    st = load_checkpoint(tmp_path / "c")
    assert st["epoch"] == 3 and st["step"] == 17 and st["config"] == {"a": 1}
    for k, v in m.state_dict().items():
        assert torch.equal(v, st["model"][k])
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.endswith(".tmp")]
