import pytest
import torch

from imgclf.training import optimizers as schedules


def lrs(factory, epochs=4, steps=10, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = factory(opt, epochs=epochs, steps_per_epoch=steps, **kw)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_warms_up_then_decays_to_min():
    values = lrs(schedules.cosine, warmup_epochs=0.5, min_lr_ratio=0.1)
    assert values[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert values[5] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[5:], values[6:]))  # monotone after warmup
    assert values[-1] == pytest.approx(0.1, abs=0.01)


def test_step_divides_every_step_epochs():
    values = lrs(schedules.step, epochs=4, steps=10, step_epochs=2, gamma=0.5)
    assert values[0] == values[19] == 1.0 and values[20] == values[39] == 0.5


def test_constant_and_one_cycle():
    assert set(lrs(schedules.constant)) == {1.0}
    values = lrs(schedules.one_cycle, pct_start=0.25)
    peak = values.index(max(values))
    assert max(values) == pytest.approx(1.0) and 8 <= peak <= 11 and values[-1] < 0.01
