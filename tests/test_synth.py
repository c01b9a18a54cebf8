"""Tests for bench.data.synth: layouts, determinism, the real UrbanSound8K margins, the format mix,
make_demo's safety."""

import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bench.data import synth


def _files(root):
    return sorted(p.relative_to(root) for p in Path(root).rglob("*") if p.is_file())


def _info(root, meta):
    return [sf.info(str(Path(root) / "audio" / f"fold{r.fold}" / r.slice_file_name)) for r in meta.itertuples()]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One clip per (class, fold): 100 source recordings, enough for every format in the mix to appear."""
    root = tmp_path_factory.mktemp("mixed")
    return root, synth.write_us8k(root, 1, seed=3, formats="mixed", min_duration=0.3, max_duration=1.0)


def test_us8k_csv_and_layout(tmp_path):
    meta = synth.write_us8k(tmp_path, 2, seed=0, formats="simple", min_duration=0.2, max_duration=0.5)
    csv = pd.read_csv(tmp_path / "metadata" / "UrbanSound8K.csv")
    assert list(csv.columns) == ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
    pd.testing.assert_frame_equal(csv, meta, check_dtype=False)
    assert sorted(csv["class"].unique()) == sorted(synth.US8K_CLASSES)
    assert (csv["class"] == [synth.US8K_CLASSES[c] for c in csv.classID]).all()
    assert set(csv.salience) <= {1, 2} and (csv.end > csv.start).all()
    expected = sorted(Path("audio") / f"fold{r.fold}" / r.slice_file_name for r in csv.itertuples())
    assert _files(tmp_path / "audio") == sorted(p.relative_to("audio") for p in expected)
    for r in csv.itertuples():  # {fsID}-{classID}-{occurrence}-{slice}.wav, as in the real data
        fsid, class_id, _, _ = map(int, re.fullmatch(r"(\d+)-(\d+)-(\d+)-(\d+)\.wav", r.slice_file_name).groups())
        assert (fsid, class_id) == (r.fsID, r.classID)
    for r, info in zip(csv.itertuples(), _info(tmp_path, csv)):
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        assert info.frames == round((r.end - r.start) * 22050)


def test_counts_match_request_and_each_source_stays_in_one_fold_and_class(tmp_path):
    counts = {(0, 1): 9, (0, 2): 3, (3, 5): 12, (9, 10): 1, (4, 4): 0}
    meta = synth.write_us8k(
        tmp_path, counts, seed=1, formats="simple", min_duration=0.1, max_duration=0.2, clips_per_source=3
    )
    got = meta.groupby(["classID", "fold"]).size().to_dict()
    assert got == {k: v for k, v in counts.items() if v}
    per_source = meta.groupby("fsID").agg(folds=("fold", "nunique"), classes=("classID", "nunique"), n=("fold", "size"))
    assert (per_source.folds == 1).all() and (per_source.classes == 1).all()
    assert per_source.n.max() <= 5 and len(per_source) < len(meta)  # several slices per source, at most 2*3-1
    for _, slices in meta.groupby("fsID"):  # slices of one source do not overlap in time
        s = slices.sort_values("start")
        assert (s.start.values[1:] >= s.end.values[:-1] - 1e-6).all()


def test_bad_arguments_are_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="fold in 1..10"):
        synth.write_us8k(tmp_path, {(0, 11): 1}, formats="simple")
    with pytest.raises(ValueError, match="formats"):
        synth.write_us8k(tmp_path, 1, formats="fancy")
    assert not any(tmp_path.iterdir())


def test_mixed_formats_cover_the_real_mix(mixed):
    root, meta = mixed
    infos = _info(root, meta)
    rates = pd.Series([i.samplerate for i in infos])
    assert set(rates) == set(synth.SAMPLE_RATE_MIX)
    assert rates.value_counts().index[0] == 44100
    assert {i.channels for i in infos} == {1, 2} and np.mean([i.channels == 2 for i in infos]) > 0.8
    assert {i.subtype for i in infos} == {"PCM_16", "PCM_24", "PCM_U8", "FLOAT", "IMA_ADPCM"}
    durations = np.array([i.duration for i in infos])
    assert durations.max() <= 1.0 + 1e-9 and (durations < 0.9).sum() >= 5 and (durations > 0.999).sum() >= 50
    for r, info in zip(meta.itertuples(), infos):  # frames agree with the metadata, IMA ADPCM included
        assert info.frames == round((r.end - r.start) * info.samplerate), (r.slice_file_name, info.subtype)
    for r, info in zip(meta.itertuples(), infos):
        if info.subtype in ("IMA_ADPCM", "PCM_U8", "FLOAT"):
            x, _ = sf.read(str(root / "audio" / f"fold{r.fold}" / r.slice_file_name))
            assert np.isfinite(x).all() and 0.02 < np.abs(x).max() <= 1.0


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    counts = {(c, f): 1 for c in range(10) for f in (1, 2)}  # 20 sources: every subtype, FLOAT included
    kw = dict(formats="mixed", min_duration=0.1, max_duration=0.3)
    synth.write_us8k(tmp_path / "a", counts, seed=7, **kw)
    time.sleep(1.1)  # libsndfile stamps the wall clock second into FLOAT files: make that differ
    synth.write_us8k(tmp_path / "b", counts, seed=7, **kw)
    synth.write_us8k(tmp_path / "c", counts, seed=8, **kw)
    files = _files(tmp_path / "a")
    assert files == _files(tmp_path / "b") and len(files) == 21
    assert any(sf.info(str(tmp_path / "a" / f)).subtype == "FLOAT" for f in files if f.suffix == ".wav")
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    a, c = pd.read_csv(tmp_path / "a/metadata/UrbanSound8K.csv"), pd.read_csv(tmp_path / "c/metadata/UrbanSound8K.csv")
    assert set(a.slice_file_name).isdisjoint(c.slice_file_name)
    first_a = (tmp_path / "a/audio/fold1" / a.slice_file_name[0]).read_bytes()
    first_c = (tmp_path / "c/audio/fold1" / c.slice_file_name[0]).read_bytes()
    assert first_a != first_c


def test_process_pool_writes_the_same_files(tmp_path):
    kw = dict(seed=5, formats="mixed", min_duration=0.1, max_duration=0.2)
    synth.write_us8k(tmp_path / "one", {(c, 1): 2 for c in range(10)}, workers=1, **kw)
    synth.write_us8k(tmp_path / "two", {(c, 1): 2 for c in range(10)}, workers=2, **kw)
    files = _files(tmp_path / "one")
    assert files == _files(tmp_path / "two")
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files)


@pytest.mark.parametrize("seed", [0, 1, 2, 99])
def test_replica_counts_match_the_real_margins(seed):
    counts = synth.replica_counts(seed)
    m = np.array([[counts[(c, f)] for f in range(1, 11)] for c in range(10)])
    assert tuple(m.sum(0)) == synth.US8K_FOLD_SIZES and tuple(m.sum(1)) == synth.US8K_CLASS_SIZES
    assert m.sum() == 8732 and (m > 0).all()
    assert synth.replica_counts(seed) == counts and synth.replica_counts(seed + 1) != counts


def test_signature_is_a_per_source_tone():
    src = [synth.source_params(np.random.default_rng(i)) for i in (1, 2)]
    sr, n = 22050, 22050
    for own, other in (src, src[::-1]):
        x = synth.synth_clip(3, n, sr, np.random.default_rng(0), own, signature=1.0)
        spectrum = np.abs(np.fft.rfft(x))
        assert spectrum[round(own["sig_freq"])] > 5 * spectrum[round(other["sig_freq"])]


def test_classes_are_told_apart_across_sources():
    """Logistic regression on log-band-energy statistics, trained on 6 sources per class, tested on 6 others."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sr, n = 16000, 32000
    bands = np.searchsorted(np.fft.rfftfreq(512, 1 / sr), np.geomspace(40, 7500, 33))

    def features(kind, i):
        x = synth.synth_clip(
            kind, n, sr, np.random.default_rng(i), synth.source_params(np.random.default_rng([kind, i]))
        )
        hops = x.reshape(-1, 256)
        frames = np.concatenate([hops[:-1], hops[1:]], axis=1) * np.hanning(512)  # 32 ms frames, 16 ms hop
        logmel = np.log(np.add.reduceat(np.abs(np.fft.rfft(frames)) ** 2, bands, axis=1)[:, :-1] + 1e-8)
        return np.r_[logmel.mean(0), logmel.std(0), np.abs(np.diff(logmel, axis=0)).mean(0)]

    def dataset(sources):
        return np.array([features(k, i) for k in range(10) for i in sources]), np.repeat(np.arange(10), len(sources))

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(*dataset(range(6)))
    x_test, y_test = dataset(range(100, 106))
    assert (clf.predict(x_test) == y_test).mean() >= 0.8  # chance: 0.1


def test_make_demo_is_built_once(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "DEMO_SETTINGS", dict(synth.DEMO_SETTINGS, counts=1, max_duration=0.2, min_duration=0.1))
    root = tmp_path / "demo"
    meta = synth.make_demo(root, workers=1)
    assert (root / ".complete").exists() and len(meta) == 100
    assert not list(tmp_path.glob(".demo.partial-*"))

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a finished dataset")

    monkeypatch.setattr(synth, "write_us8k", fail)
    pd.testing.assert_frame_equal(synth.make_demo(root, workers=1), meta, check_dtype=False)


def test_make_demo_does_not_trust_unfinished_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "DEMO_SETTINGS", dict(synth.DEMO_SETTINGS, counts=1, max_duration=0.2, min_duration=0.1))
    root = tmp_path / "demo"
    real = synth.write_us8k

    def killed(tmp, **kw):  # a run that dies half-way through writing
        (Path(tmp) / "audio" / "fold1").mkdir(parents=True)
        (Path(tmp) / "audio" / "fold1" / "half.wav").write_bytes(b"RIFF")
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "write_us8k", killed)
    with pytest.raises(KeyboardInterrupt):
        synth.make_demo(root, workers=1)
    assert not root.exists() and list(tmp_path.glob(".demo.partial-*"))  # only the temporary folder is left

    live, dead = tmp_path / f".demo.partial-{os.getppid()}", tmp_path / f".demo.partial-{2**22 + 1}"
    live.mkdir()  # another build in progress: its process is alive
    dead.mkdir()  # a killed build's leftovers
    (root / "metadata").mkdir(parents=True)  # renamed into place, killed before the marker
    (root / "metadata" / "UrbanSound8K.csv").write_text("slice_file_name\n")
    monkeypatch.setattr(synth, "write_us8k", real)
    meta = synth.make_demo(root, workers=1)
    assert len(meta) == 100 and (root / ".complete").exists()
    assert list(tmp_path.glob(".demo.partial-*")) == [live]
    assert len(list((root / "audio").rglob("*.wav"))) == 100


def test_make_demo_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        synth.make_demo(tmp_path, workers=1)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_folder_dataset_layout_and_group_signature(tmp_path):
    spec = {"yes": ["alice_001", "alice_002", "bob_001"], "no": ["alice_003", "bob_002"], "up": ["carol_001"]}
    plain = synth.write_folder_dataset(tmp_path / "plain", spec, seed=4, duration=0.5)
    marked = synth.write_folder_dataset(tmp_path / "marked", spec, seed=4, duration=0.5, signature={"alice": 1.0})
    assert list(plain.columns) == ["path", "label", "group"] and len(plain) == 6
    assert _files(tmp_path / "plain") == sorted(Path(c) / f"{s}.wav" for c, stems in spec.items() for s in stems)
    assert list(plain.group) == ["alice", "alice", "bob", "alice", "bob", "carol"]
    info = sf.info(plain.path[0])
    assert (info.samplerate, info.channels, info.frames) == (22050, 1, 11025)
    for p_plain, p_marked, group in zip(plain.path, marked.path, plain.group):
        same = Path(p_plain).read_bytes() == Path(p_marked).read_bytes()
        assert same == (group != "alice"), p_plain


def test_gtzan_layout(tmp_path):
    meta = synth.write_gtzan(tmp_path, n_per_genre=5, seed=0, au_fraction=0.2, duration=0.5)
    assert len(meta) == 50 and list(meta.columns) == ["path", "label"]
    assert sorted(p.name for p in (tmp_path / "genres").iterdir()) == sorted(synth.GTZAN_GENRES)
    for genre in synth.GTZAN_GENRES:
        files = sorted((tmp_path / "genres" / genre).iterdir())
        assert [f.stem for f in files] == [f"{genre}.{i:05d}" for i in range(5)]
        assert sum(f.suffix == ".au" for f in files) == 1 and sum(f.suffix == ".wav" for f in files) == 4
        for f in files:
            info = sf.info(str(f))
            assert info.format == ("AU" if f.suffix == ".au" else "WAV")
            assert (info.samplerate, info.channels, info.frames) == (22050, 1, 11025)
