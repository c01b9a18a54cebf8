"""Training one split: `fit_split` reads top to bottom, its helpers sit right above it.

The loop never sees a test clip until the model is chosen: normalisation statistics come from the
training clips, the epoch kept is the one with the best validation accuracy (the last one when the
split has no validation fold), and only then is the test fold predicted. The chosen weights and the
training statistics come back with the predictions (the caller keeps them as the split's model).
Training knows nothing of MLflow or Optuna: it calls `on_epoch(epoch, train_loss, val_acc)` after
every epoch. The optimizer, the LR schedule (ReduceLROnPlateau steps on the validation accuracy) and
mixup (training batches only) come from `cfg.train`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bench.core.config import ModelConfig, RunConfig, TrainConfig
from bench.features.bank import Augment
from bench.models import ModelError, create_model
from bench.core.errors import FoldbenchError


class TrainingError(FoldbenchError, RuntimeError):
    """Training that went wrong in a way worth a clear message (a NaN loss, say)."""


@dataclass
class SplitResult:
    best_epoch: int  # 1-based epoch whose weights were evaluated
    val_acc: float | None  # validation accuracy of that epoch; None without a validation fold
    test_probs: np.ndarray | None  # [n_test, n_classes] class probabilities; None when not scored
    history: list[dict] = field(default_factory=list)  # epoch, train_loss, val_acc, lr
    val_correct: int | None = None  # validation clips that epoch got right (val_acc = val_correct / n_val)
    state: dict | None = None  # the chosen epoch's weights (state_dict), on the training device
    mean: torch.Tensor | None = None  # training-set normalisation, [1, channels, bands, 1]
    std: torch.Tensor | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def band_stats(bank: torch.Tensor, idx: torch.Tensor, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per (channel, Mel band) over the given clips and all their frames."""
    total = torch.zeros(bank.shape[1:3], dtype=torch.float64, device=bank.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(idx), chunk):
        x = bank[idx[start : start + chunk]].double()
        total += x.sum(dim=(0, 3))
        total_sq += (x * x).sum(dim=(0, 3))
    n = len(idx) * bank.shape[3]
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)  # silence: std 0
    return mean.float()[None, :, :, None], std.float()[None, :, :, None]


def autocast(device: torch.device):
    """bf16 autocast on CUDA (tensor cores); plain float32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


# channels_last: cuDNN's convolutions prefer it, and on CPU (oneDNN) it cut the seed preset's training
# step from about 32 to 20 ms of CPU time per batch of 16 on one core of a 2-core EPYC machine.
CHANNELS_LAST = ("cuda", "cpu")


def model_input(x: torch.Tensor) -> torch.Tensor:
    """The model's input in the memory format the model was put in by `setup_training`."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type in CHANNELS_LAST else x


@torch.no_grad()
def predict(model, bank, idx, mean, std, batch_size: int | None = None) -> torch.Tensor:
    """Class probabilities for the clips `idx`, in order; batches of 64 on CPU (1.5-2x faster
    there than 256, which stays in cache less), 256 elsewhere."""
    batch_size = batch_size or (64 if bank.device.type == "cpu" else 256)
    model.eval()
    out = []
    for s in range(0, len(idx), batch_size):
        with autocast(bank.device):
            logits = model(model_input((bank[idx[s : s + batch_size]] - mean) / std))
        out.append(F.softmax(logits.float(), dim=1))
    return torch.cat(out) if out else torch.empty(0)


def correct_count(probs: torch.Tensor, labels: torch.Tensor) -> int:
    """How many clips the argmax of `probs` gets right: an exact integer (tune averages exact fractions)."""
    return int((probs.argmax(dim=1) == labels).sum())


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """correct / total as the float nearest that fraction (not a float32 mean: equal fractions of
    clips give bit-identical accuracies)."""
    return correct_count(probs, labels) / len(labels) if len(labels) else float("nan")


def make_optimizer(model: torch.nn.Module, tc: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum, Nesterov) at `tc.lr` (OneCycleLR then sets its own rates)."""
    if tc.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=tc.lr, momentum=tc.momentum, nesterov=tc.nesterov, weight_decay=tc.weight_decay
        )
    adam = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
    return adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=device.type == "cuda" or None)


class Schedule:
    """The learning-rate schedule: `step()` after every optimizer step (onecycle, cosine), then
    `end_epoch(val_acc)` after each epoch's validation (plateau: ReduceLROnPlateau, mode max, on the
    validation accuracy only). constant keeps `lr` throughout."""

    def __init__(self, optimizer: torch.optim.Optimizer, tc: TrainConfig, steps_per_epoch: int):
        sched = torch.optim.lr_scheduler
        self.per_step, self.plateau = None, None
        if tc.schedule == "onecycle":
            self.per_step = sched.OneCycleLR(
                optimizer,
                max_lr=tc.max_lr,
                epochs=tc.epochs,
                steps_per_epoch=steps_per_epoch,
                anneal_strategy=tc.anneal,
            )
        elif tc.schedule == "cosine":
            self.per_step = sched.CosineAnnealingLR(optimizer, T_max=tc.epochs * steps_per_epoch)
        elif tc.schedule == "plateau":
            self.plateau = sched.ReduceLROnPlateau(
                optimizer, mode="max", factor=tc.plateau_factor, patience=tc.plateau_patience
            )

    def step(self) -> None:
        if self.per_step is not None:
            self.per_step.step()

    def end_epoch(self, val_acc: float | None) -> None:
        if self.plateau is not None:
            self.plateau.step(val_acc)


def make_model(mc: ModelConfig, shape: tuple, n_classes: int, device: torch.device) -> torch.nn.Module:
    """The configured model for clips of `shape` (channels, height, width), on `device`, in the
    memory format `model_input` feeds it (training and `bench.train.predict` build it the same way)."""
    try:
        model = create_model(mc.name, tuple(shape), n_classes, **mc.params)
    except ModelError as e:
        raise TrainingError(f"{e} (features of shape {tuple(shape)})") from None
    model = model.to(device)
    if device.type in CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    return model


def setup_training(cfg: RunConfig, shape: tuple, n_classes: int, steps_per_epoch: int, device: torch.device):
    """Model, augmentation, optimizer and LR schedule for clips of `shape` (channels, height, width)."""
    model = make_model(cfg.model, shape, n_classes, device)
    augment = Augment(cfg.augment, n_mels=shape[1], frames=shape[2])
    optimizer = make_optimizer(model, cfg.train, device)
    return model, augment, optimizer, Schedule(optimizer, cfg.train, steps_per_epoch)


def training_batch(bank, batch, mean, std, augment) -> torch.Tensor:
    """The clips `batch` of the bank, normalised and augmented: the data handling of one step."""
    return augment(bank[batch].sub_(mean).div_(std))  # bank[batch] is a copy: normalise it in place


def mixup(
    x: torch.Tensor, target: torch.Tensor, n_classes: int, alpha: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., ICLR 2018) of a training batch, on its device: every clip blended with
    another clip of the same batch, weight lam ~ Beta(alpha, alpha) for the batch; soft targets."""
    lam = float(rng.beta(alpha, alpha))
    perm = torch.as_tensor(rng.permutation(len(x)), device=x.device)
    soft = F.one_hot(target, n_classes).to(x.dtype)
    return x.mul(lam).add_(x[perm], alpha=1 - lam), soft.mul(lam).add_(soft[perm], alpha=1 - lam)


def train_step(model, optimizer, scheduler, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Forward, backward and one optimizer + LR step on a ready batch; the loss, detached.
    `target`: class indices, or class probabilities [batch, classes] (mixup)."""
    with autocast(x.device):
        loss = F.cross_entropy(model(model_input(x)), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach()


def fit_split(
    bank: torch.Tensor,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    test_idx: np.ndarray | None,
    n_classes: int,
    cfg: RunConfig,
    seed: int,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
    progress: bool = False,
) -> SplitResult:
    """Train on `train_idx`, choose the epoch on `val_idx`, then predict `test_idx` (if given)."""
    tc, device = cfg.train, bank.device
    if tc.schedule == "plateau" and (val_idx is None or not len(val_idx)):
        raise TrainingError(
            "train.schedule=plateau steps on validation accuracy, and this split has "
            "no validation fold; use constant, cosine or onecycle"
        )
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    mix_rng = np.random.default_rng(seed)  # mixup's weights and pairs (drawn only when mixup > 0)
    y = torch.as_tensor(labels, dtype=torch.long, device=device)
    train = torch.as_tensor(train_idx, dtype=torch.long, device=device)
    val = torch.as_tensor(val_idx, dtype=torch.long, device=device) if val_idx is not None and len(val_idx) else None
    mean, std = band_stats(bank, train)

    model, augment, optimizer, scheduler = setup_training(
        cfg, tuple(bank.shape[1:]), n_classes, math.ceil(len(train) / tc.batch_size), device
    )
    best_state, best_epoch, best_acc, best_correct, history = None, 0, -1.0, -1, []

    for epoch in tqdm(range(1, tc.epochs + 1), disable=not progress, desc="epochs", leave=False):
        model.train()
        order = train[torch.randperm(len(train), generator=gen).to(device)]
        total, seen, lr = torch.zeros((), device=device), 0, float("nan")
        for start in range(0, len(order), tc.batch_size):
            batch = order[start : start + tc.batch_size]
            if len(batch) < 2:  # BatchNorm cannot train on a single clip
                continue
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (logged per epoch)
            x, target = training_batch(bank, batch, mean, std, augment), y[batch]
            if tc.mixup > 0:
                x, target = mixup(x, target, n_classes, tc.mixup, mix_rng)
            loss = train_step(model, optimizer, scheduler, x, target)
            total += loss * len(batch)
            seen += len(batch)
        train_loss = float(total) / max(seen, 1)
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"training loss became {train_loss} at epoch {epoch}; try a lower train.lr / train.max_lr"
            )

        correct = correct_count(predict(model, bank, val, mean, std), y[val]) if val is not None else None
        val_acc = correct / len(val) if val is not None else None  # the float nearest the fraction
        scheduler.end_epoch(val_acc)  # plateau: the validation accuracy decides the next epoch's lr
        history.append({"epoch": epoch, "train_loss": train_loss, "val_acc": val_acc, "lr": lr})
        if val is None or correct > best_correct:  # exact counts; ties keep the earlier epoch
            best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
            if val is not None:
                best_acc, best_correct = val_acc, correct
        if on_epoch is not None:
            on_epoch(epoch, train_loss, val_acc)

    model.load_state_dict(best_state)
    probs = None
    if test_idx is not None:
        test = torch.as_tensor(test_idx, dtype=torch.long, device=device)
        probs = predict(model, bank, test, mean, std).cpu().numpy()
    return SplitResult(
        best_epoch,
        best_acc if val is not None else None,
        probs,
        history,
        best_correct if val is not None else None,
        state=best_state,
        mean=mean,
        std=std,
    )
