"""Reports that say what was run: run.json, report.md/.html's first section, `cli.py report`,
a one-split run without an interval, and the fold-scores plot's chance line and interval band."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser

import pandas as pd
import pytest

from bench.core.provenance import record_digest

import cli
from bench.drivers.kfold import code_version
from bench.core.runfolder import RunFolder
from conftest import FAST

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def flags(runs, cache, root, name="p"):
    sets = [f"--set={k}={v}" for k, v in FAST.items() if k != "tracking.mlflow"]
    return [
        "--dataset",
        "us8k",
        "--root",
        str(root),
        "--runs-dir",
        str(runs),
        "--cache-dir",
        str(cache),
        "--name",
        name,
        "--splits",
        "1",
        "--epochs",
        "2",
        "--threads",
        "1",
        "--no-mlflow",
        "--quiet",
        *sets,
    ]


@pytest.fixture(scope="module")
def one_split_run(tmp_path_factory, tiny_us8k_master):
    """One real tiny kfold run, asked for split 1 only (the whole job), made through the CLI."""
    base = tmp_path_factory.mktemp("prov")
    argv = ["kfold", *flags(base / "runs", base / "cache", tiny_us8k_master)]
    assert cli.main(argv) == 0
    return base / "runs" / "p", argv, base


@pytest.fixture
def run_copy(one_split_run, tmp_path):
    """A private copy of the run that a test may damage."""
    run, argv, base = one_split_run
    copy = tmp_path / "runs" / "p"
    shutil.copytree(run, copy)
    return copy


def test_run_json_records_what_was_run(one_split_run):
    run, argv, _ = one_split_run
    record = json.loads((run / "run.json").read_text())
    assert record["command"] == "python cli.py " + " ".join(argv)  # no spaces to quote in these paths
    assert record["code_version"] == code_version() and record["host"]
    (attempt,) = record["attempts"]
    assert attempt["status"] == "finished" and attempt["started"] == record["started"]
    assert attempt["ended"] == record["ended"] and record["duration_s"] == attempt["duration_s"] >= 0
    assert attempt["threads"] == "torch threads: 1 (--threads / train.threads)"  # repeats the numbers
    done = json.loads((run / "splits" / "1" / "DONE").read_text())
    assert "run.json" not in done["files"]  # provenance, not results


def test_report_md_begins_with_what_was_run(one_split_run):
    run, argv, _ = one_split_run
    md = (run / "report.md").read_text()
    record = json.loads((run / "run.json").read_text())
    plan = json.loads((run / "plan.json").read_text())
    head, _, rest = md.partition("## Result")
    assert head.startswith("# p\n\n## What was run") and rest
    for text in (
        f"`{record['command']}`",
        f"`{record['code_version']}`",
        "took ",
        f"fingerprint `{plan['dataset_fingerprint']}`",
        "PredefinedFolds",
        "1 of 10 planned: 1 (`--splits`)",
        "| audio | sample_rate=8000",
        "n_mels=32",
        "n_fft=256",
        "| train | epochs=2",
        "batch_size=8",
        "| model | name=tutorial_cnn",
        "; torch threads: 1 (--threads",
    ):
        assert text in head, text
    table = head.partition("### Settings")[2]
    assert "mlflow" not in table and "threads" not in table and "device" not in table  # not result settings
    best = json.loads((run / "splits" / "1" / "split.json").read_text())["best_epoch"]
    row = next(line for line in rest.splitlines() if line.startswith("| 1 | 1 |"))
    assert row.endswith(f"| {best} |")  # the chosen epoch, in the per-split table


def test_one_split_run_is_complete_and_has_no_interval(one_split_run):
    run, _, _ = one_split_run
    scores = json.loads((run / "scores.json").read_text())
    assert scores["n_splits"] == 1 and scores["missing_splits"] == [] and scores["expected_splits"] == [1]
    assert scores["acc_ci95_low"] is None and scores["acc_ci95_high"] is None
    md = (run / "report.md").read_text()
    assert "INCOMPLETE" not in md and "one split: no interval" in md and "95 % CI" not in md


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.text, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.srcs += [v for k, v in attrs if k == "src"]

    def handle_data(self, data):
        self.text.append(data)


def test_report_html_is_self_contained(one_split_run):
    run, _, _ = one_split_run
    page = _Page()
    page.feed((run / "report.html").read_text())
    page.close()
    assert page.tags[:1] == ["html"] and "style" in page.tags and page.tags.count("table") >= 3
    md_images = (run / "report.md").read_text().count("![")
    assert len(page.srcs) == md_images == 4  # every image of report.md, embedded
    for src in page.srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC
    text = "".join(page.text)
    record = json.loads((run / "run.json").read_text())
    assert text.index("What was run") < text.index(record["command"]) < text.index("Result")
    assert record["code_version"] in text and "n_mels=32" in text and "one split: no interval" in text


def test_cli_report_rebuilds_the_same_scores(run_copy, capsys):
    before = (run_copy / "scores.json").read_bytes()
    for name in ("scores.json", "report.md", "report.html", "fold_scores.png", "per_fold.csv"):
        (run_copy / name).unlink()
    assert cli.main(["report", str(run_copy)]) == 0
    assert (run_copy / "scores.json").read_bytes() == before
    assert (run_copy / "report.md").read_text().startswith("# p\n\n## What was run")
    assert (run_copy / "fold_scores.png").read_bytes()[:8] == PNG_MAGIC
    assert "report.md" in capsys.readouterr().out


def test_cli_report_refuses_a_tampered_split_and_writes_nothing(run_copy, capsys):
    path = run_copy / "splits" / "1" / "predictions.csv"
    pred = pd.read_csv(path, dtype={"clip": str})
    pred.assign(pred=pred["label"]).to_csv(path, index=False)  # every prediction made right
    md = (run_copy / "report.md").read_bytes()
    capsys.readouterr()
    assert cli.main(["report", str(run_copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "split 1 cannot be scored" in err and "changed" in err
    assert (run_copy / "report.md").read_bytes() == md


def test_cli_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    for folder in (tmp_path / "notes", tmp_path / "absent"):
        assert cli.main(["report", str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(folder) in err
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["a.txt"]


def test_run_json_is_not_in_the_done_digests(run_copy):
    record = json.loads((run_copy / "run.json").read_text())
    (run_copy / "run.json").write_text(json.dumps({**record, "host": "elsewhere"}))
    assert RunFolder(run_copy).verified() == [1]


@pytest.mark.parametrize("attempts", [[5, "x", None], {"a": 1}, 3])
def test_cli_report_reads_a_damaged_run_json_without_a_traceback(run_copy, attempts):
    """A damaged run.json is named as such, and nothing of it is shown."""
    record = json.loads((run_copy / "run.json").read_text())
    (run_copy / "run.json").write_text(json.dumps({**record, "attempts": attempts}))
    assert cli.main(["report", str(run_copy)]) == 0
    md = (run_copy / "report.md").read_text()
    assert record["command"] not in md and "run.json does not match its digest" in md


def test_an_edited_run_json_is_not_shown_and_a_resume_replaces_it(run_copy, capsys):
    """run.json carries its own digest: an edited command or host is not reported as provenance."""
    record = json.loads((run_copy / "run.json").read_text())
    assert cli.main(["report", str(run_copy)]) == 0
    assert record["command"] in (run_copy / "report.md").read_text()
    (run_copy / "run.json").write_text(json.dumps({**record, "host": "forged-host"}))
    assert cli.main(["report", str(run_copy)]) == 0
    md = (run_copy / "report.md").read_text()
    assert "forged-host" not in md and "does not match its digest" in md
    from bench.core.provenance import Attempt, read_run_json

    Attempt.begin(run_copy, resume=True, code_version="x").end("finished")
    fresh = read_run_json(run_copy)
    assert fresh["host"] != "forged-host" and len(fresh["attempts"]) == 1 and "replaced" in fresh


def test_a_run_inside_another_points_to_its_run_json_not_to_an_old_foldbench(run_copy, tmp_path):
    """A nested run's non-nested/kfold has no run.json of its own: its command is the nested run's."""
    inner = tmp_path / "runs" / "outer" / "non-nested" / "kfold"
    shutil.copytree(run_copy, inner)
    (inner / "run.json").unlink()
    shutil.copy(run_copy / "run.json", inner.parent.parent / "run.json")
    shutil.copy(run_copy / "config.yaml", inner.parent.parent / "config.yaml")
    assert cli.main(["report", str(inner)]) == 0
    md = (inner / "report.md").read_text()
    assert f"part of: {(inner.parent.parent / 'run.json').resolve()}" in md and "before foldbench" not in md
    (run_copy / "run.json").unlink()  # a lone run without one: made before run.json existed
    assert cli.main(["report", str(run_copy)]) == 0
    assert "made before foldbench wrote it" in (run_copy / "report.md").read_text()


def test_resumed_run_keeps_the_first_start_and_adds_an_attempt(one_split_run, tiny_us8k_master, tmp_path):
    run, _, base = one_split_run
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / "p")
    first = json.loads((runs / "p" / "run.json").read_text())
    first["attempts"][0].update(status="running", ended=None, duration_s=None)  # as a kill -9 leaves it
    first["digest"] = record_digest(first)
    (runs / "p" / "run.json").write_text(json.dumps(first))
    argv = ["kfold", *flags(runs, base / "cache", tiny_us8k_master), "--resume"]
    assert cli.main(argv) == 0
    record = json.loads((runs / "p" / "run.json").read_text())
    old, new = record["attempts"]
    assert record["started"] == old["started"] == first["started"] and new["started"] >= old["started"]
    assert old["status"] == "interrupted" and old["ended"] is None
    assert new["status"] == "finished" and new["command"].endswith("--resume")
    assert record["duration_s"] == new["duration_s"] and record["ended"] == new["ended"]
    md = (runs / "p" / "report.md").read_text()
    assert "2 attempts" in md and "interrupted" in md


def test_fold_scores_plot_has_chance_and_interval(tmp_path, monkeypatch):
    import reports.plots as plots

    figures = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path: figures.append(fig))
    folds = pd.DataFrame({"split": [1, 2, 3], "test_fold": [1, 2, 3], "accuracy": [0.5, 0.6, 0.7]})
    plots.plot_fold_scores(folds, tmp_path / "a.png", n_classes=4, interval=(0.35, 0.85))
    plots.plot_fold_scores(folds.head(1), tmp_path / "b.png", n_classes=4, interval=(None, None))
    (three, one) = [f.axes[0] for f in figures]
    labels = three.get_legend_handles_labels()[1]
    assert "chance (1/4)" in labels and "95 % interval of the mean 0.350–0.850" in labels
    ys = {round(float(line.get_ydata()[0]), 6) for line in three.get_lines()}
    assert {0.25, 0.6} <= ys  # chance, mean
    assert not any(label.startswith("95 %") for label in one.get_legend_handles_labels()[1])
    assert "one split: no interval" in one.get_title()


def test_cli_report_waits_for_no_job_a_job_holds_the_folder(run_copy, capsys):
    import fcntl
    import os

    fd = os.open(run_copy, os.O_RDONLY | os.O_DIRECTORY)  # as a kfold job still writing it does
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert cli.main(["report", str(run_copy)]) == 2
        assert "in use by another foldbench process" in capsys.readouterr().err
    finally:
        os.close(fd)
    assert cli.main(["report", str(run_copy)]) == 0


def test_nested_run_report_points_to_the_chosen_settings(run_copy):
    from reports import build_report

    md = (run_copy / "report.md").read_text()
    assert "nested.md" not in md
    (run_copy / "search.json").write_text("{}\n")  # what marks a nested run's folder
    build_report(run_copy)
    head = (run_copy / "report.md").read_text().partition("## Result")[0]
    assert "outer splits of a nested run" in head and "[nested.md](nested.md)" in head
