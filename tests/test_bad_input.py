"""Bad input: each case gets a message naming the file and the reason, or a listed quarantine."""

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from bench.drivers.kfold import run_cv
from bench.data.datasets import DatasetError
from bench.train.fit import band_stats
from tests.conftest import fast_config


def _meta(root):
    return pd.read_csv(root / "metadata" / "UrbanSound8K.csv")


def _audio(root, row):
    return root / "audio" / f"fold{row.fold}" / row.slice_file_name


def plant_faults(root):
    """One file of each kind of fault, in different folds; returns {clip: expected reason}."""
    meta = _meta(root)
    rows = {
        kind: meta.iloc[i] for kind, i in zip(["missing", "corrupt", "empty", "silent", "nan", "inf"], range(0, 90, 15))
    }
    _audio(root, rows["missing"]).unlink()
    _audio(root, rows["corrupt"]).write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(200)))
    _audio(root, rows["empty"]).write_bytes(b"")
    sf.write(_audio(root, rows["silent"]), np.zeros(4000, np.float32), 8000, subtype="PCM_16")
    bad = np.random.default_rng(0).uniform(-0.5, 0.5, 4000).astype(np.float32)
    bad[100] = np.nan
    sf.write(_audio(root, rows["nan"]), bad, 8000, subtype="FLOAT")
    bad[100] = np.inf
    sf.write(_audio(root, rows["inf"]), bad, 8000, subtype="FLOAT")
    reasons = {
        "missing": "file not found",
        "corrupt": "cannot decode",
        "empty": "empty file",
        "silent": "silent",
        "nan": "non-finite",
        "inf": "non-finite",
    }
    return {f"fold{r.fold}/{r.slice_file_name}": reasons[k] for k, r in rows.items()}


def test_bad_files_are_quarantined_and_listed(tiny_us8k, tmp_path):
    expected = plant_faults(tiny_us8k)
    cfg = fast_config(tmp_path, tiny_us8k, splits=[1], **{"train.epochs": 1})
    result = run_cv(cfg, progress=False)
    got = dict(zip(result.quarantine["clip"], result.quarantine["reason"]))
    assert set(got) == set(expected)
    for clip, reason in expected.items():
        assert reason in got[clip], (clip, got[clip])
    report = (result.run_dir / "report.md").read_text()
    for clip in expected:
        assert clip in report
    folds = pd.read_csv(result.run_dir / "folds.csv")
    assert not set(expected) & set(folds["clip"])  # none of them trained or tested on
    assert len(folds) == len(_meta(tiny_us8k)) - len(expected)  # and nothing else dropped
    assert result.scores["quarantined"] == len(expected)


def test_strict_turns_quarantine_into_an_error_naming_every_file(tiny_us8k, tmp_path):
    expected = plant_faults(tiny_us8k)
    cfg = fast_config(tmp_path, tiny_us8k, **{"dataset.strict": True})
    with pytest.raises(DatasetError) as err:
        run_cv(cfg, progress=False)
    for clip in expected:
        assert clip in str(err.value)
    assert "non-finite" in str(err.value) and "silent" in str(err.value)


def test_metadata_without_a_required_column(tiny_us8k, tmp_path):
    _meta(tiny_us8k).drop(columns="classID").to_csv(tiny_us8k / "metadata" / "UrbanSound8K.csv", index=False)
    with pytest.raises(DatasetError, match=r"UrbanSound8K\.csv: missing required column\(s\) classID"):
        run_cv(fast_config(tmp_path, tiny_us8k), progress=False)


def test_path_escaping_the_dataset_root(tiny_us8k, tmp_path):
    meta = _meta(tiny_us8k)
    meta.loc[4, "slice_file_name"] = "../../../outside.wav"
    meta.to_csv(tiny_us8k / "metadata" / "UrbanSound8K.csv", index=False)
    with pytest.raises(DatasetError, match=r"row 6: path .*outside\.wav escapes the dataset root"):
        run_cv(fast_config(tmp_path, tiny_us8k), progress=False)


def test_missing_metadata_file_and_missing_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="metadata file not found"):
        run_cv(fast_config(tmp_path, tmp_path / "empty"), progress=False)
    with pytest.raises(DatasetError, match="not a folder"):
        run_cv(fast_config(tmp_path, tmp_path / "nowhere"), progress=False)


def test_normalisation_of_silent_input_is_finite():
    bank = torch.full((4, 1, 8, 10), -100.0)  # AmplitudeToDB of all-zero audio
    mean, std = band_stats(bank, torch.arange(4))
    x = (bank - mean) / std
    assert torch.isfinite(x).all() and (std > 0).all()
