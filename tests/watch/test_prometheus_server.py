"""A real Prometheus server scrapes a real `moediag watch` while a writer process emits SGLang dumps.

Debian's ``prometheus`` binary is started on a free loopback port with a generated scrape config and its
own storage in tmp; the test asks its HTTP API for ``moediag_layer_balancedness`` per layer and compares
with what the dumps hold. Skipped (with the reason) where the binary is not installed; CI installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.watch.writer import expected_balancedness

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None
)
ROOT = Path(__file__).resolve().parents[2]
N_DUMPS = 6

pytestmark = [
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="the prometheus server binary is not installed (apt-get install prometheus)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return bytes(r.read())


def _wait(what: str, fn, timeout: float = 60.0, every: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_prometheus_scrapes_per_layer_balancedness_from_moediag_watch(tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    watch_port, prom_port = _free_port(), _free_port()
    watch = subprocess.Popen(
        [sys.executable, "-m", "moediag", "watch", str(dumps), "--format", "sglang",
         "--listen", f"127.0.0.1:{watch_port}", "--state", str(tmp_path / "state.json"),
         "--interval", "0.2", "--settle", "0.3", "--window-seconds", "600", "--per-expert", "all"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: moediag\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{watch_port}']\n"
    )
    prom = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    writer = None
    try:
        _wait(
            "moediag watch /healthz", lambda: _get(f"http://127.0.0.1:{watch_port}/healthz").startswith(b"ok")
        )
        writer = subprocess.Popen(
            [sys.executable, "-m", "tests.watch.writer", str(dumps), str(N_DUMPS), "0.2"],
            env=_env(),
            cwd=ROOT,
        )
        assert writer.wait(timeout=60) == 0
        want = expected_balancedness(N_DUMPS)

        def scraped() -> dict[int, float] | None:
            q = urllib.parse.urlencode({"query": 'moediag_layer_balancedness{job="moediag"}'})
            doc = json.loads(_get(f"http://127.0.0.1:{prom_port}/api/v1/query?{q}"))
            assert doc["status"] == "success"
            got = {int(r["metric"]["layer"]): float(r["value"][1]) for r in doc["data"]["result"]}
            close = set(got) == set(want) and all(abs(got[k] - want[k]) < 1e-9 for k in want)
            return got if close else None

        got = _wait("Prometheus to hold the expected balancedness", scraped, timeout=90)
        assert got.keys() == want.keys()  # the dense layer 0 is no MoE layer

        q = urllib.parse.urlencode({"query": "moediag_watch_files_total"})
        files = json.loads(_get(f"http://127.0.0.1:{prom_port}/api/v1/query?{q}"))["data"]["result"]
        assert float(files[0]["value"][1]) == N_DUMPS

        body = _get(f"http://127.0.0.1:{watch_port}/metrics").decode()
        fams = {f.name: f for f in text_string_to_metric_families(body)}
        direct = {int(s.labels["layer"]): s.value for s in fams["moediag_layer_balancedness"].samples}
        assert direct == pytest.approx(want, abs=1e-12)
        shares = fams["moediag_expert_load_share"].samples
        assert len(shares) == len(want) * 8
        assert fams["moediag_watch_bad_files"].samples[0].value == 0
        assert {s.labels["rule"] for s in fams["moediag_rule_alert"].samples} >= {"max_vio", "max_cv"}
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
        prom.terminate()
        try:
            prom.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prom.kill()
        watch.send_signal(signal.SIGTERM)
        try:
            out, err = watch.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            watch.kill()
            out, err = watch.communicate()
    assert watch.returncode == 0, err
    assert "stopped (SIGTERM)" in err and "Traceback" not in err
    assert sorted(p.name for p in dumps.iterdir()) == sorted(
        f"expert_distribution_recorder_{1700000000 + i}.pt" for i in range(N_DUMPS)
    )  # nothing written into the watched folder
