import logging

import pytest
import torch
from torch import nn

from imgclf.data.datasets import TensorImageDataset, build_loader
from imgclf.data.transforms import Preprocess
from imgclf.devices import resolve_device, seed_everything
from imgclf.inference import DeviceSetup
from imgclf.training.engine import NonFiniteLoss, Progress, Trainer, evaluate, fit, train_one_epoch
from imgclf.training.optimizers import constant


def tiny_data(n=32, classes=2):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    images = (torch.rand(n, 3, 8, 8, generator=g) * 80).to(torch.uint8)
    images[labels == 1, 0] += 150  # class 1 is red: learnable in a few steps
    return TensorImageDataset(images, labels)


def tiny_model(classes=2):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, classes))


def tiny_trainer(model, optimizer, **options):
    """A CPU Trainer with cross-entropy and a fixed normalisation around `model`."""
    return Trainer(
        model,
        nn.CrossEntropyLoss(),
        optimizer,
        DeviceSetup.for_device(torch.device("cpu")),
        Preprocess([0.5] * 3, [0.25] * 3),
        **options,
    )


def run_fit(epochs=3, lr=0.05):
    generator = seed_everything(0)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = constant(opt, epochs, 4)
    ds = tiny_data()
    trainer = tiny_trainer(model, opt, scheduler=sched)
    return fit(trainer, build_loader(ds, 8, True, generator), build_loader(ds, 8, False), epochs)


def test_fit_learns_and_keeps_best_by_val_acc():
    result = run_fit(epochs=4)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]
    best = max(h["val/acc"] for h in result.history)
    assert result.best_metrics["val/acc"] == best == 1.0
    assert set(result.best_state) == {"1.weight", "1.bias", "3.weight", "3.bias"}


def test_same_seed_gives_identical_history():
    assert run_fit().history[-1]["train/loss"] == run_fit().history[-1]["train/loss"]
    drop = lambda h: {k: v for k, v in h.items() if "time" not in k and "per_sec" not in k}  # noqa: E731
    assert [drop(h) for h in run_fit().history] == [drop(h) for h in run_fit().history]


def test_nonfinite_loss_stops_with_step():
    model = tiny_model()
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    loader = build_loader(tiny_data(), 8, False)
    with pytest.raises(NonFiniteLoss, match="epoch 1 step 1"):
        train_one_epoch(
            tiny_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1)),
            loader,
            epoch=1,
        )


def test_evaluate_keys_and_accuracy():
    model = tiny_model()
    metrics = evaluate(
        model,
        build_loader(tiny_data(), 8, False),
        DeviceSetup.for_device(torch.device("cpu")),
        Preprocess([0.5] * 3, [0.25] * 3),
        prefix="test",
    )
    assert set(metrics) == {"test/loss", "test/acc"}
    data = tiny_data()
    with torch.no_grad():  # the same figures computed directly from the model's logits
        logits = model((data.images.float() - 0.5 * 255) / (0.25 * 255))
    assert metrics["test/acc"] == (logits.argmax(1) == data.labels).float().mean().item()
    assert metrics["test/loss"] == pytest.approx(nn.functional.cross_entropy(logits, data.labels).item(), rel=1e-5)


def test_cpu_fallback_has_no_amp_or_channels_last():
    setup = DeviceSetup.for_device(torch.device("cpu"))
    assert setup.amp_dtype is None and not setup.channels_last
    with setup.autocast():
        assert not torch.is_autocast_enabled("cpu")
    x = setup.to_input(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), Preprocess([0.5] * 3, [0.25] * 3))
    assert x.dtype == torch.float32 and x.is_contiguous()
    torch.testing.assert_close(x, torch.full_like(x, -2.0))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="choose one of: auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_progress_logs_plain_lines_off_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="imgclf.training.engine")
    progress = Progress(total=5, desc="epoch 1", log_every=2, tty=False)
    for step in range(1, 6):
        progress.update(step, loss=0.5, images_per_sec=100.0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "epoch 1 batch 2/5 loss 0.5000 100 img/s",
        "epoch 1 batch 4/5 loss 0.5000 100 img/s",
        "epoch 1 batch 5/5 loss 0.5000 100 img/s",
    ]


def test_early_stopping_stops_after_patience_epochs_without_gain():
    generator = seed_everything(0)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing learns: val/acc never improves after epoch 1
    trainer = tiny_trainer(model, opt)
    ds = tiny_data()
    state = fit(trainer, build_loader(ds, 8, True, generator), build_loader(ds, 8, False), 10, patience=2)
    assert [h["epoch"] for h in state.history] == [1, 2, 3] and state.stopped_early and state.best_epoch == 1
    # resumed from the stopping epoch's checkpoint, it stays stopped (an uninterrupted run trained no more)
    again = fit(trainer, build_loader(ds, 8, True, generator), build_loader(ds, 8, False), 10, state, patience=2)
    assert [h["epoch"] for h in again.history] == [1, 2, 3]


def test_grad_clip_bounds_the_update():
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer = tiny_trainer(model, opt, grad_clip=1e-3)
    train_one_epoch(trainer, build_loader(tiny_data(8), 8, False), epoch=1)  # one step
    step = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert 0 < step.item() <= 1e-3 * 1.0001  # lr 1 x clipped norm


def test_sharded_batches_split_global_batches_across_ranks():
    from imgclf.data.sampling import ShardedBatchSampler

    one = list(ShardedBatchSampler(10, 4, True, torch.Generator().manual_seed(0)))
    ranks = [list(ShardedBatchSampler(10, 4, True, torch.Generator().manual_seed(0), r, 2)) for r in (0, 1)]
    assert [len(b) for b in one] == [4, 4, 2]
    for global_batch, a, b in zip(one, *ranks):  # the same global batches, each split in two
        assert sorted(a + b) == sorted(global_batch) and a == global_batch[0::2]
    assert sorted(sum(one, [])) == list(range(10))
    with pytest.raises(ValueError, match="batch_size=1 is smaller than the 2 processes"):
        ShardedBatchSampler(10, 1, True, None, 0, 2)


def test_a_last_training_batch_of_one_image_is_dropped_and_evaluation_keeps_every_image():
    from imgclf.data.sampling import ShardedBatchSampler

    train = ShardedBatchSampler(9, 4, True, torch.Generator().manual_seed(0))  # batch norm cannot train on one
    assert [len(b) for b in train] == [4, 4] and len(train) == 2
    two = ShardedBatchSampler(11, 4, True, torch.Generator().manual_seed(0), 1, 2)  # 3 left: one for rank 1
    assert [len(b) for b in two] == [2, 2] and len(two) == 2
    evaluation = ShardedBatchSampler(9, 4, False)
    assert [len(b) for b in evaluation] == [4, 4, 1] and len(evaluation) == 3
    assert [len(b) for b in ShardedBatchSampler(10, 4, True, torch.Generator())] == [4, 4, 2]
