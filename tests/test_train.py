"""fit_split: learns, chooses the epoch on validation only, never touches the test fold when told not to."""
import numpy as np
import pytest
import torch

from bench.config import RunConfig, merge
from bench.train import TrainingError, fit_split


def toy_bank(n_per_class=30, n_classes=3, seed=0):
    """Log-mel-like inputs where class c has a bright band at Mel rows 4c..4c+3."""
    g = torch.Generator().manual_seed(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    bank = torch.randn(len(labels), 1, 16, 20, generator=g) * 2 - 60
    for i, c in enumerate(labels):
        bank[i, 0, 4 * c:4 * c + 4] += 25
    return bank, labels


CFG = merge(RunConfig(), {"train.epochs": 6, "train.batch_size": 8, "train.max_lr": 3e-3,
                          "augment.freq_masks": 0, "augment.time_masks": 0})


def test_short_training_run_learns():
    bank, labels = toy_bank()
    idx = np.random.default_rng(0).permutation(len(labels))
    train, val, test = idx[:54], idx[54:72], idx[72:]
    seen = []
    result = fit_split(bank, labels, train, val, test, 3, CFG, seed=1,
                       on_epoch=lambda e, loss, acc: seen.append((e, loss, acc)))
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
