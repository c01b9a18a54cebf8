"""A run's split models, kept and used: `model.pt` (written by `pack_model`) and `predict`.

Each split that scores its test fold keeps `splits/<k>/model.pt`: one `torch.save` of a dict of
tensors and plain values (so `torch.load(..., weights_only=True)` reads it, no pickled code):

    format       "foldbench-model/1"
    state_dict   the chosen epoch's weights (the best validation epoch; the last with --val none), CPU
    mean, std    the training clips' normalisation statistics, [1, channels, bands, 1]
    classes      class names in class-id order
    input_shape  one clip's feature map (channels, bands, frames)
    model        {"name", "params"}; audio, features: the AudioConfig / FeatureConfig fields
    split, test_fold, best_epoch

`predict_files` decodes new files exactly as the cache did for training (`bench.data.audio.load_clip`
with the run's audio settings, then the cache's int16 round trip, `bench.data.cache.quantise`), computes
the split's front end, normalises with its statistics, runs its model and takes the softmax. The
default is the ensemble of every finished split model (the mean of their probabilities). Each
model.pt is read once and checked against its split's DONE digest, after `RunFolder.verified`.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.data.audio import BadAudio, load_clip
from bench.data.cache import dequantise, quantise
from bench.core.config import AudioConfig, ConfigError, FeatureConfig, ModelConfig
from bench.data.folder_datasets import AUDIO_EXTENSIONS
from bench.features.bank import frontend_maps
from bench.core.runfolder import RunFolder, RunFolderError, read_json
from bench.train.fit import make_model, predict, resolve_device

MODEL_FILE = "model.pt"
FORMAT = "foldbench-model/1"


def pack_model(result, cfg, classes: list[str], input_shape: tuple, info: dict) -> bytes:
    """model.pt's bytes for a fitted split (`bench.train.fit.SplitResult`) of config `cfg`."""
    data = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in result.state.items()},
        "mean": result.mean.detach().cpu(),
        "std": result.std.detach().cpu(),
        "classes": [str(c) for c in classes],
        "input_shape": [int(s) for s in input_shape],
        "model": {"name": cfg.model.name, "params": dict(cfg.model.params)},
        "audio": asdict(cfg.audio),
        "features": asdict(cfg.features),
        "split": int(info["split"]),
        "test_fold": info.get("test_fold"),
        "best_epoch": int(info["best_epoch"]),
    }
    buf = io.BytesIO()
    torch.save(data, buf)
    return buf.getvalue()


@dataclass
class SplitModel:
    split: int
    state_dict: dict
    mean: torch.Tensor
    std: torch.Tensor
    classes: list[str]
    input_shape: tuple
    model: ModelConfig
    audio: AudioConfig
    features: FeatureConfig


def model_splits(folder: RunFolder) -> list[int]:
    """The finished splits whose DONE marker vouches for a model.pt."""
    return [k for k in folder.done() if MODEL_FILE in (read_json(folder.split_dir(k) / "DONE").get("files") or {})]


def load_split_model(folder: RunFolder, k: int) -> SplitModel:
    """Split k's model.pt, read once and checked against its DONE digest before it is loaded."""
    path = folder.split_dir(k) / MODEL_FILE
    want = (read_json(folder.split_dir(k) / "DONE").get("files") or {}).get(MODEL_FILE)
    data = path.read_bytes() if path.is_file() else b""
    if want is None or hashlib.sha256(data).hexdigest() != want:
        raise RunFolderError(
            f"{path}: changed after split {k} finished (its digest differs from "
            f"DONE's); run `kfold --name {folder.path.name} --resume` to train it again"
        )
    try:
        d = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, expected {FORMAT!r}")
        return SplitModel(
            k,
            d["state_dict"],
            d["mean"],
            d["std"],
            list(d["classes"]),
            tuple(d["input_shape"]),
            ModelConfig(**d["model"]),
            AudioConfig(**d["audio"]),
            FeatureConfig(**d["features"]),
        )
    except Exception as e:  # a digest that matches vouches for the bytes, not for this foldbench
        raise RunFolderError(f"{path}: cannot be read by this foldbench ({type(e).__name__}: {e})") from None


def choose_splits(folder: RunFolder, split: int | None) -> list[int]:
    """The splits to predict with (`split`, or every finished one with a model), verified."""
    if not (folder.path / "config.yaml").is_file():
        raise RunFolderError(f"--run {folder.path}: not a run folder (no config.yaml)")
    with_model = model_splits(folder)
    if split is not None:
        planned = folder.planned()
        if split not in planned:
            raise ConfigError(
                f"--split {split}: no such split in {folder.path} (its splits: {_ranges(planned) or 'none'})"
            )
        asked = folder.asked()
        if split not in asked and split not in folder.done():  # --resume would not train it
            raise ConfigError(
                f"--split {split}: {folder.path} was run on splits {_ranges(asked)} only "
                f"(--splits), so it has no model for split {split}"
            )
        if split not in folder.done():
            raise RunFolderError(
                f"--split {split}: that split of {folder.path} is not finished; "
                f"finish it with `kfold --name {folder.path.name} --resume`"
            )
        if split not in with_model:
            raise RunFolderError(
                f"--split {split}: {folder.path} kept no model for it (trained before "
                f"foldbench saved models, or a tune trial); train the run again"
            )
        chosen = [split]
    else:
        if not with_model:
            raise RunFolderError(
                f"--run {folder.path}: no saved models (a run made before foldbench "
                f"kept them, a tune trial, or no finished split); train it again "
                f"with kfold to get splits/<k>/model.pt"
            )
        chosen = with_model
    folder.verified(chosen, score_test=True)  # DONE digests (model.pt included), settings, predictions
    return chosen


def _ranges(ks: list[int]) -> str:
    return f"{ks[0]}..{ks[-1]}" if len(ks) > 1 and ks == list(range(ks[0], ks[-1] + 1)) else ", ".join(map(str, ks))


def expand_files(items: list[str]) -> list[Path]:
    """Files as given; a directory becomes its audio files (extensions as the folder datasets read,
    any depth), sorted. A path that does not exist, or a directory with no audio, is refused."""
    files = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file())
            if not found:
                raise ConfigError(f"{item}: a directory with no audio files ({', '.join(AUDIO_EXTENSIONS)})")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise ConfigError(f"{item}: no such file or directory")
    return files


def decode_files(files: list[Path], audio: AudioConfig) -> np.ndarray:
    """[n, channels, samples] float32: each file as the training cache holds a clip (decoded, mixed,
    resampled, padded or trimmed, then the cache's int16 round trip). Files that cannot be used are
    refused together, each named with its reason."""
    out, bad = [], []
    for f in files:
        try:
            out.append(dequantise(*quantise(load_clip(f, audio))))
        except BadAudio as e:
            bad.append(f"{f} ({e})")
        except OSError as e:
            bad.append(f"{f} (cannot read: {e.strerror or e})")
    if bad:
        raise BadAudio(f"{len(bad)} file(s) cannot be used, nothing predicted: {'; '.join(bad)}")
    return np.stack(out)


def longer_than(files: list[Path], audio: AudioConfig) -> list[Path]:
    """The files longer than the run's clips (`audio.duration`): only their start is classified, as
    training kept only the start of each clip. Files whose header does not say are not listed."""
    import soundfile as sf

    longer = []
    for f in files:
        try:
            info = sf.info(str(f))
        except Exception:  # noqa: BLE001 (decode_files has already read it; a header is a nicety here)
            continue
        if info.samplerate and info.frames / info.samplerate > audio.duration + 1 / info.samplerate:
            longer.append(f)
    return longer


@torch.no_grad()
def split_probs(m: SplitModel, maps: torch.Tensor, device: torch.device) -> np.ndarray:
    """Split model `m`'s class probabilities [n, classes] for the feature maps `maps` of the clips."""
    if tuple(maps.shape[1:]) != m.input_shape:
        raise RunFolderError(
            f"split {m.split}: features of shape {tuple(maps.shape[1:])}, its model takes {m.input_shape}"
        )
    model = make_model(m.model, m.input_shape, len(m.classes), device)
    model.load_state_dict(m.state_dict)
    idx = torch.arange(len(maps), device=device)
    return predict(model, maps, idx, m.mean.to(device), m.std.to(device)).cpu().numpy()


@dataclass
class Prediction:
    table: pd.DataFrame  # path, predicted, prob_<class> (6 decimals, as predictions.csv)
    splits: list[int]
    classes: list[str]
    unfinished: list[int] = ()  # splits the run asked for that have no model (default ensemble only)
    longer: list[Path] = ()  # files longer than the run's clips: only their first `duration` s counted
    duration: float = 0.0


def predict_files(run: str | Path, items: list[str], split: int | None = None, device: str = "cpu") -> Prediction:
    """Class probabilities of the audio files `items` (directories expanded) under split `split`'s
    model, or the mean over every finished split model of the run."""
    folder = RunFolder(run)
    splits = choose_splits(folder, split)
    files = expand_files(items)
    models = [load_split_model(folder, k) for k in splits]
    classes = models[0].classes
    if any(m.classes != classes for m in models):
        raise RunFolderError(f"{folder.path}: the split models disagree on the classes")
    dev = resolve_device(device)
    # Decoded once per audio config and featurised once per feature config (every split of a kfold
    # run shares both; a nested run's outer splits may not)
    decoded: dict[str, np.ndarray] = {}
    maps: dict[str, torch.Tensor] = {}
    probs = []
    for m in models:
        audio_key = repr(asdict(m.audio))
        if audio_key not in decoded:
            decoded[audio_key] = decode_files(files, m.audio)
        waves = decoded[audio_key]
        key = audio_key + repr(asdict(m.features))
        if key not in maps:
            maps[key] = frontend_maps(lambda a, b, w=waves: w[a:b], len(waves), m.audio, m.features, dev)
        probs.append(split_probs(m, maps[key], dev))
    mean = np.mean(probs, axis=0)
    table = pd.DataFrame({"path": [str(f) for f in files], "predicted": [classes[i] for i in mean.argmax(axis=1)]})
    for c, name in enumerate(classes):
        table[f"prob_{name}"] = mean[:, c].round(6)
    unfinished = []
    if split is None:  # an ensemble of a run killed (or still running) part way is a smaller one: say so
        unfinished = [k for k in folder.asked() if k not in splits]
    audio = models[0].audio
    return Prediction(table, splits, classes, unfinished, longer_than(files, audio), audio.duration)


def shown_path(path: str, room: int | None = None) -> str:
    """`path` as a terminal shows it: relative to the working folder when inside it; when longer
    than `room`, its end (the file name and the folders nearest it) after '...'."""
    try:
        path = str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        pass
    if room is not None and len(path) > room:
        path = "..." + path[len(path) - max(room - 3, 1) :]
    return path


def fitted_table(pred: Prediction, width: int) -> str:
    """One line per file within `width` characters: every class's probability when they fit,
    else the predicted class and its probability (the CSV of --out has them all)."""
    t = pred.table.rename(columns={f"prob_{c}": c for c in pred.classes})
    t["path"] = [shown_path(p) for p in t["path"]]
    full = t.to_string(index=False, float_format=lambda v: f"{v:.4f}")
    if max(map(len, full.splitlines())) <= width:
        return full
    probs = [row[f"prob_{c}"] for row, c in zip(pred.table.to_dict("records"), pred.table["predicted"])]
    named = max(len("predicted"), *(len(c) for c in pred.table["predicted"]))
    room = max(12, width - named - len("  ") - len("  0.0000"))
    paths = [shown_path(p, room) for p in pred.table["path"]]
    wide = max(len("path"), *map(len, paths))
    lines = [f"{'path':<{wide}}  {'predicted':<{named}}    prob"]
    lines += [f"{p:<{wide}}  {c:<{named}}  {v:.4f}" for p, c, v in zip(paths, pred.table["predicted"], probs)]
    return "\n".join(lines) + "\n(every class's probability: --out FILE.csv)"


def render(pred: Prediction, width: int | None = None) -> str:
    """What `predict` prints: which model(s), then one line per file; `width`: the file lines fit
    in it (`fitted_table`; the head and a note stay one line each, as messages do)."""
    ks = pred.splits
    head = (
        f"split {ks[0]}'s model"
        if len(ks) == 1
        else f"ensemble of {len(ks)} split models (splits {_ranges(ks)}): the mean of their class probabilities"
    )
    if pred.unfinished:
        head += (
            f"; the run is unfinished: no model yet for split(s) {_ranges(list(pred.unfinished))} "
            f"(the run's command with --resume finishes them)"
        )
    if width is None:
        t = pred.table.rename(columns={f"prob_{c}": c for c in pred.classes})
        text = head + "\n" + t.to_string(index=False, float_format=lambda v: f"{v:.4f}")
    else:
        text = head + "\n" + fitted_table(pred, width)
    if pred.longer:
        text += (
            f"\nnote: {len(pred.longer)} file(s) longer than the run's {pred.duration:g} s clips "
            f"(e.g. {pred.longer[0]}): only their first {pred.duration:g} s was classified, as "
            f"training kept only each clip's start"
        )
    return text
