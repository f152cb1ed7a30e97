"""A fleet of two guests as Prometheus sees it: real `prometheus-node-exporter` and real
`prometheus` (Debian's, installed by scripts/setup.sh), on 127.0.0.1 only, each on a free port
with its own directories, started and stopped here.

Each guest is a node_exporter whose textfile collector reads what `memtrace snapshot --format
openmetrics -o` wrote from a capture made in a lab guest (tests/fixtures/README.md): kernel 6.1
with bochs (framebuffer UC-) and with qxl (WC). No guest is booted. Prometheus scrapes both
every second; the alert query is read from the README, and must find the bochs guest and not
the qxl one.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import FIXTURES, REPO, memtrace_argv

NODE_EXPORTER = "prometheus-node-exporter"
PROMETHEUS = "prometheus"
GUESTS = {"bochs-6.1": "guest-6.1-bochs", "qxl-6.1": "guest-6.1-qxl"}
# The bench timer's textfile beside the snapshot's, as on a guest that enables both: a bench
# recorded in a 6.1 bochs guest (tests/fixtures/bench/README.md).
BENCHES = {"bochs-6.1": "6.1-bochs.json"}
WAIT_S = 60  # both guests scraped; measured: a few seconds
STARTUP_S = 30
METRICS = ("snapshot", "--format", "openmetrics")


def _bench_metrics(name):
    from memtrace.tools.bench import render

    with open(os.path.join(FIXTURES, "bench", name), encoding="utf-8") as src:
        return render(json.load(src), "openmetrics")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def _wait_until(what, check, limit):
    """Call ``check`` until it returns something true, at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {limit} s waiting for {what}")
        time.sleep(0.2)


class _Processes:
    """The servers this test started, stopped (by their own handles) at the end."""

    def __init__(self, logs):
        self.logs, self.running = logs, []

    def start(self, name, argv):
        log = open(os.path.join(self.logs, f"{name}.log"), "wb")
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        self.running.append((name, process))
        return process

    def log(self, name):
        with open(os.path.join(self.logs, f"{name}.log"), errors="replace") as src:
            return src.read()[-3000:]

    def stop(self):
        for _name, process in self.running:
            process.terminate()
        for _name, process in self.running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def alert_query():
    """The alert the README gives a fleet operator: its one ```promql block."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as src:
        blocks = re.findall(r"```promql\n(.*?)\n```", src.read(), re.S)
    assert len(blocks) == 1, "the README has one promql block: the alert"
    return blocks[0].strip()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two node_exporters (one per guest's textfile) and a Prometheus scraping both;
    yields a function running an instant PromQL query, returning ``{guest: value}``."""
    for binary in (NODE_EXPORTER, PROMETHEUS):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (scripts/setup.sh installs it)")
    base = tmp_path_factory.mktemp("fleet")
    processes = _Processes(str(base))
    targets = {}
    try:
        for guest, capture in GUESTS.items():
            textfiles = base / guest
            textfiles.mkdir()
            textfile = textfiles / "memtrace.prom"
            proc = subprocess.run(
                memtrace_argv(
                    *METRICS, "--root", os.path.join(FIXTURES, capture), "-o", str(textfile)
                ),
                capture_output=True,
                text=True,
                check=False,
                cwd=str(base),
            )
            assert proc.returncode in (0, 1) and proc.stderr == "", proc.stderr
            if guest in BENCHES:
                (textfiles / "memtrace-bench.prom").write_text(_bench_metrics(BENCHES[guest]))
            port = _free_port()
            processes.start(
                guest,
                [
                    NODE_EXPORTER,
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--collector.disable-defaults",
                    "--collector.textfile",
                    f"--collector.textfile.directory={textfiles}",
                ],
            )
            targets[guest] = f"127.0.0.1:{port}"
        port = _free_port()
        config = base / "prometheus.yml"
        config.write_text(
            json.dumps(
                {  # YAML is a superset of JSON
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "guests",
                            "static_configs": [
                                {"targets": [target], "labels": {"guest": guest}}
                                for guest, target in targets.items()
                            ],
                        }
                    ],
                }
            )
        )
        processes.start(
            PROMETHEUS,
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={base / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
        )
        api = f"http://127.0.0.1:{port}/api/v1/query?query="

        def query(promql):
            answer = json.loads(_get(api + urllib.parse.quote(promql)))
            assert answer["status"] == "success", answer
            return {
                s["metric"].get("guest"): float(s["value"][1]) for s in answer["data"]["result"]
            }

        for guest, target in targets.items():
            _wait_until(
                f"node_exporter of {guest} to answer",
                lambda target=target: "memtrace_info" in _get(f"http://{target}/metrics"),
                STARTUP_S,
            )
        _wait_until(
            "Prometheus to have scraped memtrace_info of both guests",
            lambda: set(query("memtrace_info")) == set(GUESTS),
            WAIT_S,
        )
        yield query
    except BaseException:
        for name, _process in processes.running:
            print(f"--- {name} log:\n{processes.log(name)}")
        raise
    finally:
        processes.stop()


def test_the_readme_alert_finds_the_uncached_guest_and_not_the_write_combining_one(fleet):
    found = fleet(alert_query())
    assert found == {"bochs-6.1": 1.0}


def test_both_guests_are_scraped_whole(fleet):
    """The negative is real: the qxl guest's metrics are there, saying WC; node_exporter
    parsed both textfiles without error."""
    assert fleet("up") == {"bochs-6.1": 1.0, "qxl-6.1": 1.0}
    assert fleet('memtrace_display_framebuffer_type{type="WC"} == 1') == {"qxl-6.1": 1.0}
    assert fleet("node_textfile_scrape_error") == {"bochs-6.1": 0.0, "qxl-6.1": 0.0}
    assert fleet('memtrace_findings{kind="uncached-framebuffer"} > 0') == {"bochs-6.1": 1.0}
    assert fleet("memtrace_pat_enabled") == {"bochs-6.1": 1.0, "qxl-6.1": 1.0}
    # Two textfiles of one guest: node_exporter merged their memtrace_info family.
    assert fleet("count by (guest) (memtrace_info)") == {"bochs-6.1": 2.0, "qxl-6.1": 1.0}
    assert fleet('count by (guest) (memtrace_bench_bytes_per_second{mapping="anonymous"})') == {
        "bochs-6.1": 3.0
    }
