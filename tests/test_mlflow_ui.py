"""Browser acceptance: MLflow's own UI, served from a fresh tiny kfold's store and rendered by headless
Chromium, opens on the runs table with foldbench's columns, and shows the parent's report.html.

Skipped when no `chromium`/`chromium-browser` is on PATH (`apt-get install -y chromium`)."""

from __future__ import annotations

import html
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from test_tracking import json_file, tracked_kfold

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no chromium or chromium-browser on PATH (apt-get install -y chromium)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory, tiny_us8k_master):
    """A tiny kfold logged to SQLite, and `mlflow server` on it; yields (base URL, run folder, parent id)."""
    tmp = tmp_path_factory.mktemp("ui")
    cfg, result = tracked_kfold(tmp, tiny_us8k_master, name="ui-run")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            cfg.tracking.tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # the server answers within seconds; a busy machine, within two minutes
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {server.stderr.read()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield url, result.run_dir, json_file(result.run_dir / "mlflow.json")
    finally:
        server.terminate()
        server.wait(timeout=30)


def render(url: str) -> str:
    """The DOM Chromium renders at `url` once the SPA's requests settled."""
    out = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=5000,1400",
            "--dump-dom",
            "--virtual-time-budget=30000",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    return out.stdout


def text_of(dom: str) -> str:
    text = re.sub(r"<style.*?</style>|<script.*?</script>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def test_the_printed_link_opens_the_runs_table_with_metrics_and_params(ui):
    from bench.tracking.layout import runs_link

    url, run_dir, ids = ui
    text = text_of(render(runs_link(url, ids["experiment"])))
    assert "ui-run" in text, text[:2000]
    header = text[text.index("Run Name") :]
    for column in ("acc_mean", "features.n_mels", "protocol.name", "Dataset", "Source"):
        assert column in header, (column, header[:1500])
    assert "us8k-folds" in header  # the dataset inputs fill the Dataset column


def test_the_parents_report_html_renders_in_the_artifact_view(ui):
    url, run_dir, ids = ui
    dom = render(f"{url}/#/experiments/{ids['experiment']}/runs/{ids['parent']}/artifacts/report.html")
    assert "report.html" in text_of(dom), text_of(dom)[:2000]
    # MLflow's HTML viewer: the artifact fetched from the server, shown in a sandboxed iframe (its
    # document is a blob, outside the dumped DOM: what the server sent for it is checked below)
    assert re.search(r'<iframe src="blob:[^"]+"[^>]*class="mlflow-html-iframe"', dom), dom[-3000:]
    served = (
        urllib.request.urlopen(f"{url}/get-artifact?path=report.html&run_uuid={ids['parent']}", timeout=30)
        .read()
        .decode()
    )
    assert served == (run_dir / "report.html").read_text()
