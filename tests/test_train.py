"""fit_split: learns, chooses the epoch on validation only, never touches the test fold when told not to."""

import numpy as np
import pytest
import torch

from bench.core.config import RunConfig, merge
from bench.train.fit import TrainingError, fit_split


def toy_bank(n_per_class=30, n_classes=3, seed=0):
    """Log-mel-like inputs where class c has a bright band at Mel rows 4c..4c+3."""
    g = torch.Generator().manual_seed(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    bank = torch.randn(len(labels), 1, 16, 20, generator=g) * 2 - 60
    for i, c in enumerate(labels):
        bank[i, 0, 4 * c : 4 * c + 4] += 25
    return bank, labels


CFG = merge(
    RunConfig(),
    {"train.epochs": 6, "train.batch_size": 8, "train.max_lr": 3e-3, "augment.freq_masks": 0, "augment.time_masks": 0},
)


def test_short_training_run_learns():
    bank, labels = toy_bank()
    idx = np.random.default_rng(0).permutation(len(labels))
    train, val, test = idx[:54], idx[54:72], idx[72:]
    seen = []
    result = fit_split(
        bank, labels, train, val, test, 3, CFG, seed=1, on_epoch=lambda e, loss, acc: seen.append((e, loss, acc))
    )
    assert [e for e, _, _ in seen] == list(range(1, 7))
    assert result.test_probs.shape == (18, 3) and np.allclose(result.test_probs.sum(1), 1, atol=1e-5)
    assert (result.test_probs.argmax(1) == labels[test]).mean() >= 0.8
    assert seen[-1][1] < seen[0][1]  # the loss went down
    best = max(range(6), key=lambda i: (seen[i][2], -i))  # first epoch with the top val accuracy
    assert result.best_epoch == best + 1 and result.val_acc == seen[best][2]


def test_same_seed_same_result_and_no_test_when_not_asked():
    bank, labels = toy_bank()
    idx = np.arange(len(labels))
    a = fit_split(bank, labels, idx[::2], idx[1::4], idx[3::4], 3, CFG, seed=5)
    b = fit_split(bank, labels, idx[::2], idx[1::4], idx[3::4], 3, CFG, seed=5)
    assert np.array_equal(a.test_probs, b.test_probs) and a.history == b.history
    c = fit_split(bank, labels, idx[::2], idx[1::4], None, 3, CFG, seed=5)
    assert c.test_probs is None and c.history == a.history


def test_without_validation_the_last_epoch_is_kept():
    bank, labels = toy_bank()
    idx = np.arange(len(labels))
    result = fit_split(bank, labels, idx[::2], None, idx[1::2], 3, CFG, seed=0)
    assert result.best_epoch == CFG.train.epochs and result.val_acc is None
    assert all(h["val_acc"] is None for h in result.history)


def test_test_clips_cannot_change_the_chosen_model():
    """Corrupting the test clips changes nothing but the test predictions."""
    bank, labels = toy_bank()
    idx = np.arange(len(labels))
    train, val, test = idx[::2], idx[1::4], idx[3::4]
    a = fit_split(bank, labels, train, val, test, 3, CFG, seed=2)
    poisoned = bank.clone()
    poisoned[test] = torch.randn_like(poisoned[test]) * 1000
    b = fit_split(poisoned, labels, train, val, test, 3, CFG, seed=2)
    assert a.history == b.history and a.best_epoch == b.best_epoch


def test_nan_loss_is_a_clear_error():
    bank, labels = toy_bank()
    bank[0] = float("nan")
    idx = np.arange(len(labels))
    with pytest.raises(TrainingError, match="training loss became nan"):
        fit_split(bank, labels, idx, None, None, 3, CFG, seed=0)


# ---- optimizers, schedules, mixup ---------------------------------------------------------


def lrs(result):
    return [h["lr"] for h in result.history]


def test_default_is_adam_with_onecycle():
    from bench.train.fit import Schedule, setup_training

    _, _, opt, sched = setup_training(CFG, (1, 16, 20), 3, 10, torch.device("cpu"))
    assert type(opt) is torch.optim.Adam and isinstance(sched, Schedule)
    assert isinstance(sched.per_step, torch.optim.lr_scheduler.OneCycleLR) and sched.plateau is None


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_the_optimizer_is_the_configured_one(name, cls):
    from bench.train.fit import setup_training

    cfg = merge(
        CFG,
        {
            "train.optimizer": name,
            "train.momentum": 0.9,
            "train.nesterov": name == "sgd",
            "train.weight_decay": 0.01,
            "train.schedule": "constant",
            "train.lr": 0.02,
        },
    )
    _, _, opt, _ = setup_training(cfg, (1, 16, 20), 3, 10, torch.device("cpu"))
    group = opt.param_groups[0]
    assert type(opt) is cls and group["lr"] == 0.02 and group["weight_decay"] == 0.01
    if name == "sgd":
        assert group["momentum"] == 0.9 and group["nesterov"] is True
    bank, labels = toy_bank()
    idx = np.arange(len(labels))
    a = fit_split(bank, labels, idx[::2], idx[1::2], None, 3, cfg, seed=0)
    b = fit_split(
        bank,
        labels,
        idx[::2],
        idx[1::2],
        None,
        3,
        merge(cfg, {"train.optimizer": "adam", "train.nesterov": False}),
        seed=0,
    )
    assert [h["train_loss"] for h in a.history] != [h["train_loss"] for h in b.history]


def test_constant_and_cosine_schedules():
    bank, labels = toy_bank()
    idx = np.arange(len(labels))
    const = fit_split(
        bank, labels, idx[::2], idx[1::2], None, 3, merge(CFG, {"train.schedule": "constant", "train.lr": 2e-3}), seed=0
    )
    assert lrs(const) == [2e-3] * CFG.train.epochs
    cos = fit_split(
        bank, labels, idx[::2], idx[1::2], None, 3, merge(CFG, {"train.schedule": "cosine", "train.lr": 2e-3}), seed=0
    )
    assert all(a > b for a, b in zip(lrs(cos), lrs(cos)[1:])) and lrs(cos)[0] <= 2e-3
    assert lrs(cos)[-1] < 2e-3 * 0.1  # the last step of the run is close to 0


def test_plateau_drops_the_lr_after_patience_epochs_without_validation_gain():
    """Validation clips carry a class (3) that no training clip has, so validation accuracy stays
    at 0: after epoch 1 sets the best, epochs 2 and 3 do not improve, and with patience 1 the lr
    of epoch 4 is lr x factor; it drops again after two more flat epochs."""
    bank, labels = toy_bank()
    labels = labels.copy()
    idx = np.arange(len(labels))
    val = idx[1::3]
    labels[val] = 3
    train = np.setdiff1d(idx, val)
    cfg = merge(
        CFG, {"train.schedule": "plateau", "train.lr": 1e-3, "train.plateau_factor": 0.5, "train.plateau_patience": 1}
    )
    result = fit_split(bank, labels, train, val, None, 4, cfg, seed=0)
    assert [h["val_acc"] for h in result.history] == [0.0] * 6  # the premise
    assert lrs(result) == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


def test_plateau_ignores_the_test_fold_and_follows_validation():
    """Same training and validation, the test clips replaced by noise: the lrs are the same."""
    bank, labels = toy_bank()
    idx = np.arange(len(labels))
    cfg = merge(CFG, {"train.schedule": "plateau", "train.plateau_patience": 0})
    a = fit_split(bank, labels, idx[::2], idx[1::4], idx[3::4], 3, cfg, seed=3)
    poisoned = bank.clone()
    poisoned[idx[3::4]] = torch.randn_like(poisoned[idx[3::4]]) * 1000
    b = fit_split(poisoned, labels, idx[::2], idx[1::4], idx[3::4], 3, cfg, seed=3)
    assert a.history == b.history


def test_plateau_without_a_validation_fold_is_refused_before_training():
    from bench.core.config import ConfigError
    from bench.core.validation import validate

    cfg = merge(CFG, {"train.schedule": "plateau"})
    with pytest.raises(ConfigError, match="protocol.val=none has no validation fold"):
        validate(merge(cfg, {"protocol.val": "none"}))
    bank, labels = toy_bank()
    idx = np.arange(len(labels))
    seen = []
    with pytest.raises(TrainingError, match="no validation fold"):
        fit_split(bank, labels, idx, None, None, 3, cfg, seed=0, on_epoch=lambda *a: seen.append(a))
    assert seen == []


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"train.optimizer": "rmsprop"}, "train.optimizer"),
        ({"train.schedule": "step"}, "train.schedule"),
        ({"train.momentum": 1.5}, "train.momentum"),
        ({"train.nesterov": True}, "train.nesterov"),
        ({"train.plateau_factor": 1.0}, "train.plateau_factor"),
        ({"train.plateau_patience": -1}, "train.plateau_patience"),
        ({"train.mixup": -0.1}, "train.mixup"),
    ],
)
def test_new_train_fields_are_validated(overrides, match):
    from bench.core.config import ConfigError
    from bench.core.validation import validate

    with pytest.raises(ConfigError, match=match):
        validate(merge(CFG, overrides))


def test_mixup_changes_the_training_loss_only(monkeypatch):
    """Mixup blends training batches: the training loss changes, and it is never applied while
    predicting (validation, test); the test clips never enter a training batch (noise there changes
    nothing in the history)."""
    import bench.train.fit as train_mod

    bank, labels = toy_bank()
    idx = np.arange(len(labels))
    train, val, test = idx[::2], idx[1::4], idx[3::4]
    plain = fit_split(bank, labels, train, val, test, 3, CFG, seed=4)
    mixed_cfg = merge(CFG, {"train.mixup": 0.4})

    calls, predicting = [], [False]
    real_mixup, real_predict = train_mod.mixup, train_mod.predict

    def spy_mixup(x, target, *a):
        assert not predicting[0]
        calls.append(len(x))
        return real_mixup(x, target, *a)

    def spy_predict(*a, **k):
        predicting[0] = True
        try:
            return real_predict(*a, **k)
        finally:
            predicting[0] = False

    monkeypatch.setattr(train_mod, "mixup", spy_mixup)
    monkeypatch.setattr(train_mod, "predict", spy_predict)
    mixed = fit_split(bank, labels, train, val, test, 3, mixed_cfg, seed=4)
    assert sum(calls) == len(train) * CFG.train.epochs  # every training clip, every epoch
    assert [h["train_loss"] for h in mixed.history] != [h["train_loss"] for h in plain.history]
    poisoned = bank.clone()
    poisoned[test] = torch.randn_like(poisoned[test]) * 1000
    again = fit_split(poisoned, labels, train, val, test, 3, mixed_cfg, seed=4)
    assert again.history == mixed.history


def test_mixup_blends_inputs_and_targets_with_one_weight():
    from bench.train.fit import mixup

    x = torch.arange(4.0).reshape(4, 1, 1, 1)
    y = torch.tensor([0, 1, 2, 0])
    mx, my = mixup(x, y, 3, 0.4, np.random.default_rng(0))
    rng = np.random.default_rng(0)  # the same draws, made here: one weight, one pairing
    w, perm = float(rng.beta(0.4, 0.4)), torch.as_tensor(rng.permutation(4))
    assert torch.allclose(mx.flatten(), w * x.flatten() + (1 - w) * x.flatten()[perm])
    onehot = torch.nn.functional.one_hot(y, 3).float()
    assert torch.allclose(my, w * onehot + (1 - w) * onehot[perm])
