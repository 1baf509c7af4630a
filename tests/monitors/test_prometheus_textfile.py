"""monitoring.prometheus_textfile: node_exporter's textfile format, read back with prometheus_client's parser.

Names, labels and values are compared with what the monitor sampled (GPUs from the fake NVML);
atomicity with a reader polling during many writes; a real `aetherium-hpc run` and a runtime
session leave the file during the run and none after; a missing folder is one line, exit code 2.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from fake_pynvml import GPU0, GPU1, MIG_A, MIG_B, make_module, two_gpus_and_mig
from launch_helpers import aetherium_cli, make_config
from prometheus_client.parser import text_string_to_metric_families
from testenv import ROOT, unavailable

from aetherium_hpc import launch
from aetherium_hpc.config import Monitoring, parse_config
from aetherium_hpc.errors import ConfigError
from aetherium_hpc.identity import JobIdentity
from aetherium_hpc.monitors import PrometheusTextfile, ResourceMonitor, default_collectors
from aetherium_hpc.monitors.base import Sample
from aetherium_hpc.monitors.prometheus import COUNTERS, NAMES, NOT_EXPORTED, TIMESTAMP_METRIC
from aetherium_hpc.paths import textfile_path
from aetherium_hpc.runtime import run_task
from aetherium_hpc.store import catalogue

ARRAY_TASK = JobIdentity(job_id="700_3", array_job_id="700", array_task_id=3, node="n1", hostname="n1.cluster")
LABELS = {"job_id": "700_3", "array_job_id": "700", "array_task_id": "3", "node": "n1"}


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Series name -> {sorted labels: value}; the parser raises on anything not in the format.
    Gauges, and counters (the running counts) named ``*_total``."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.type in ("gauge", "counter"), family
        assert family.documentation, family.name
        for s in family.samples:
            assert s.name == family.name + ("_total" if family.type == "counter" else "") and s.timestamp is None
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", make_module(two_gpus_and_mig()))


def sampled_monitor(tmp_path: Path, gpu: bool) -> tuple[ResourceMonitor, list[Sample]]:
    textfile = PrometheusTextfile.for_job(str(tmp_path), ARRAY_TASK)
    monitor = ResourceMonitor(sink=lambda s, ts: None, store_getter=None, textfile=textfile, gpu=gpu)
    for collector in monitor.collectors:
        collector.start()
    monitor.sample_once()
    samples = monitor.sample_once(timestamp=1_700_000_000.25)
    for collector in monitor.collectors:
        collector.close()
    return monitor, samples


# -- the format ------------------------------------------------------------------------------
def test_every_sampled_value_is_in_the_file_with_its_name_labels_and_base_unit(tmp_path: Path, nvml: None) -> None:
    monitor, samples = sampled_monitor(tmp_path, gpu=True)
    path = tmp_path / "aetherium_700_3_n1.prom"
    assert monitor.textfile is not None and monitor.textfile.path == str(path)
    parsed = parse(path.read_text())

    expected: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for mtype, mname, value, unit, device in samples:
        spec = catalogue.spec_of(mtype, mname)
        if spec in NOT_EXPORTED:
            continue
        scale = {"MB": 2**20, "ms": 1e-3}.get(unit, 1.0)
        labels = {**LABELS, **({"device": device} if device else {})}
        expected.setdefault(NAMES[spec], {})[key(labels)] = value * scale
    expected[TIMESTAMP_METRIC] = {key(LABELS): 1_700_000_000.25}
    assert parsed.keys() == expected.keys()
    for name, series in expected.items():
        assert parsed[name].keys() == series.keys(), name
        for labels, value in series.items():
            assert parsed[name][labels] == pytest.approx(value, rel=1e-12), (name, labels)

    # The GPU series are there, per device, in bytes and watts (the fake's figures).
    gpus = parsed["aetherium_gpu_utilization_percent"]
    assert {dict(k)["device"] for k in gpus} == {GPU0, GPU1}  # none for a MIG-mode board or its MIG devices
    assert gpus[key({**LABELS, "device": GPU1})] == 90
    memory = parsed["aetherium_gpu_memory_used_bytes"]
    assert {dict(k)["device"] for k in memory} == {GPU0, GPU1, MIG_A, MIG_B}
    assert memory[key({**LABELS, "device": GPU1})] == 8192 * 2**20
    assert parsed["aetherium_gpu_power_watts"][key({**LABELS, "device": GPU1})] == 300.5
    assert parsed["aetherium_memory_rss_bytes"][key(LABELS)] > 2**20  # this process: MB became bytes
    assert not any(name.startswith("aetherium_process") for name in parsed)  # per-pid rows stay out
    assert parsed["aetherium_monitor_nvml_errors_total"] == {key(LABELS): 0}  # a running count: a counter


def test_running_counts_are_counters_named_total(tmp_path: Path) -> None:
    textfile = PrometheusTextfile.for_job(str(tmp_path), ARRAY_TASK)
    textfile.write([catalogue.STORE_DROPPED.sample(3.0), catalogue.MONITOR_NVML_ERRORS.sample(2.0),
                    catalogue.STORE_QUEUE_DEPTH.sample(5.0)], 1.0)  # fmt: skip
    text = Path(textfile.path).read_text()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    assert types == {
        "aetherium_store_dropped_records_total": "counter", "aetherium_monitor_nvml_errors_total": "counter",
        "aetherium_store_queue_depth_records": "gauge", TIMESTAMP_METRIC: "gauge",
    }  # fmt: skip
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["aetherium_store_dropped_records"] == families["aetherium_monitor_nvml_errors"] == "counter"
    parsed = parse(text)
    assert parsed["aetherium_store_dropped_records_total"] == {key(LABELS): 3}
    assert parsed["aetherium_monitor_nvml_errors_total"] == {key(LABELS): 2}


def test_label_values_are_escaped_as_the_format_asks(tmp_path: Path) -> None:
    odd = JobIdentity(job_id='9"x\\y', node="n\n1")
    textfile = PrometheusTextfile.for_job(str(tmp_path), odd)
    textfile.write([catalogue.CPU_PROCESS_TREE.sample(12.5), catalogue.GPU_POWER.sample(1.0, 'GPU-"a"\\b')], 5.0)
    assert os.path.basename(textfile.path) == "aetherium_9_x_y_n_1.prom"  # a plain file name
    parsed = parse(Path(textfile.path).read_text())
    assert parsed["aetherium_cpu_percent"] == {key({"job_id": '9"x\\y', "node": "n\n1"}): 12.5}
    assert parsed["aetherium_gpu_power_watts"] == {
        key({"job_id": '9"x\\y', "node": "n\n1", "device": 'GPU-"a"\\b'}): 1.0
    }


def test_infinite_values_are_written_as_the_format_spells_them(tmp_path: Path) -> None:
    textfile = PrometheusTextfile.for_job(str(tmp_path), JobIdentity(job_id="5", node="n"))
    for value in (1.5, float("inf"), -float("inf"), 2.5):  # the template path and the +Inf one, in turn
        textfile.write([catalogue.GPU_POWER.sample(value, "GPU-a"), catalogue.GPU_POWER.sample(7.0, "GPU-b")], 9.0)
        text = Path(textfile.path).read_text()
        parsed = parse(text)["aetherium_gpu_power_watts"]
        assert parsed[key({"job_id": "5", "node": "n", "device": "GPU-a"})] == value
        assert "inf\n" not in text


def test_the_catalogue_is_mapped_once_to_valid_unique_names_in_base_units() -> None:
    assert set(NAMES) | set(NOT_EXPORTED) == set(catalogue.METRICS)
    names = list(NAMES.values())
    assert len(set(names)) == len(names)
    for spec, name in NAMES.items():
        assert re.fullmatch(r"aetherium_[a-z_]+", name), name
        assert name.endswith("_total") == (spec in COUNTERS), (spec, name)  # counters and only they
        suffix = {"MB": "_bytes", "B": "_bytes", "ms": "_seconds", "%": "_percent", "W": "_watts", "C": "_celsius"}
        if spec.unit in suffix:
            assert name.endswith(suffix[spec.unit]), (spec, name)
    docs = (ROOT / "docs" / "PROMETHEUS.md").read_text(encoding="utf-8")
    assert [name for name in names if f"| `{name}`" not in docs] == []  # each in the docs' table


def test_a_prom_path_with_placeholders_and_labels_of_a_plain_job(tmp_path: Path) -> None:
    job = JobIdentity(job_id="41", node="n2")
    assert textfile_path(str(tmp_path / "job-{job_id}-{node}.prom"), job) == str(tmp_path / "job-41-n2.prom")
    textfile = PrometheusTextfile.for_job(str(tmp_path / "fixed.prom"), job)
    textfile.write([catalogue.RAM_PROCESS_TREE_RSS.sample(3.0)], 1.0)
    parsed = parse((tmp_path / "fixed.prom").read_text())
    assert parsed["aetherium_memory_rss_bytes"] == {key({"job_id": "41", "node": "n2"}): 3 * 2**20}


# -- atomic writes ------------------------------------------------------------------------------
def test_a_reader_polling_during_many_writes_never_sees_a_partial_file(tmp_path: Path) -> None:
    textfile = PrometheusTextfile.for_job(str(tmp_path), ARRAY_TASK)
    path = Path(textfile.path)
    # Each tick a different size (a growing set of GPUs): a torn read would show a cut line or family.
    ticks = [
        [catalogue.CPU_PROCESS_TREE.sample(float(i))]
        + [catalogue.GPU_MEMORY_USED.sample(float(i), f"GPU-{d:04d}") for d in range(i % 50)]
        for i in range(1, 1001)
    ]
    textfile.write(ticks[0], 1.0)
    stop = threading.Event()
    reads: list[int] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                text = path.read_text()
                parsed = parse(text)
                tick = int(parsed["aetherium_cpu_percent"][key(LABELS)])
                gpus = parsed.get("aetherium_gpu_memory_used_bytes", {})
                if len(gpus) != tick % 50 or parsed[TIMESTAMP_METRIC][key(LABELS)] != tick:
                    problems.append(f"tick {tick}: {len(gpus)} GPU series")
                reads.append(tick)
            except Exception as exc:  # a missing file or text the parser refuses
                problems.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i, samples in enumerate(ticks, start=1):
            textfile.write(samples, float(i))
    finally:
        stop.set()
        thread.join(30)
    assert not problems, problems[:3]
    assert len(reads) > 10 and reads == sorted(reads)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left


# -- in a job ------------------------------------------------------------------------------------
def test_a_job_session_writes_the_file_while_it_runs_and_removes_it_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AETHERIUM_LOCAL_DIR", str(tmp_path))
    folder = tmp_path / "textfile"
    folder.mkdir()
    seen: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}

    def workload(session: object) -> None:
        path = folder / "aetherium_700_3_n1.prom"
        deadline = time.monotonic() + 30
        # the first tick has no CPU share yet (it is the baseline): wait for the second
        while not (path.exists() and "aetherium_cpu_percent{" in path.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        seen.update(parse(path.read_text()))

    mon = Monitoring(interval_s=0.05, gpu=False, prometheus_textfile=str(folder))
    run_task(ARRAY_TASK, workload, tmp_path / "db" / "n1.db", mon)
    assert seen["aetherium_cpu_percent"].keys() == {key(LABELS)}
    assert seen["aetherium_memory_rss_bytes"][key(LABELS)] > 0
    assert list(folder.iterdir()) == []  # the job ended: node_exporter exports nothing of it


CHILD_READS_THE_FILE = (
    "import glob, os, sys, time\n"
    "folder = os.environ['AETHERIUM_PROMETHEUS_TEXTFILE']\n"
    "deadline = time.monotonic() + 60\n"
    "def ready():\n"
    "    paths = glob.glob(folder + '/*.prom')\n"
    "    return paths and 'aetherium_cpu_percent{' in open(paths[0]).read()\n"
    "while not ready() and time.monotonic() < deadline: time.sleep(0.05)\n"
    "[path] = glob.glob(folder + '/*.prom')\n"
    "print(os.path.basename(path)); print(open(path).read())\n"
)


def test_aetherium_hpc_run_writes_it_from_the_environment_variable(tmp_path: Path) -> None:
    folder = tmp_path / "node_exporter"
    folder.mkdir()
    proc = aetherium_cli(
        ["run", "--db-dir", str(tmp_path / "db"), "--no-gpu", "--", sys.executable, "-c", CHILD_READS_THE_FILE],
        tmp_path, drop=("SLURM_", "AETHERIUM_"), timeout=120, SLURM_JOB_ID="812", SLURMD_NODENAME="n2",
        AETHERIUM_PROMETHEUS_TEXTFILE=str(folder), AETHERIUM_LOCAL_DIR=str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    name, _, text = proc.stdout.partition("\n")
    assert name == "aetherium_812_n2.prom"
    parsed = parse(text)
    assert parsed["aetherium_cpu_percent"].keys() == {key({"job_id": "812", "node": "n2"})}
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("how", ["option", "variable", "config"])
def test_a_missing_folder_is_one_line_and_exit_code_2_before_the_job(tmp_path: Path, how: str) -> None:
    missing = str(tmp_path / "no such folder")
    args, env = ["run", "--db-dir", str(tmp_path / "db")], {}
    if how == "option":
        args += ["--prometheus-textfile", missing]
    elif how == "variable":
        env["AETHERIUM_PROMETHEUS_TEXTFILE"] = missing
    else:
        config = tmp_path / "job.yaml"
        config.write_text(f'name: x\nworkload: {{command: ["true"]}}\nmonitoring:\n  prometheus_textfile: {missing}\n')
        args += ["--config", str(config)]
    proc = aetherium_cli([*args, "--", sys.executable, "-c", "open('ran', 'w')"], tmp_path, timeout=60, **env)
    assert proc.returncode == 2
    origin = {"option": "--prometheus-textfile", "variable": "$AETHERIUM_PROMETHEUS_TEXTFILE", "config": "job.yaml"}
    [line] = proc.stderr.splitlines()
    assert (
        origin[how] in line and f"monitoring.prometheus_textfile: {missing!r}: folder {missing} does not exist" in line
    )
    assert "create it" in line
    assert not (tmp_path / "ran").exists() and not (tmp_path / "db").exists()


def test_config_checks_the_form_and_a_local_submission_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"job.yaml:4: monitoring.prometheus_textfile: '/x/\{rank\}.prom': unknown"):
        parse_config(
            'name: x\nworkload: {command: ["true"]}\nmonitoring:\n  prometheus_textfile: "/x/{rank}.prom"\n',
            source="job.yaml",
        )
    config = make_config(tmp_path / "runs", monitoring={"prometheus_textfile": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match="does not exist on this node"):
        launch.check_submission(config, "local", tmp_path / "runs" / "r")
    launch.check_submission(config, "slurm", tmp_path / "runs" / "r")  # the Slurm node checks its own


def test_a_write_that_fails_is_reported_once_and_sampling_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    textfile = PrometheusTextfile.for_job(str(folder), ARRAY_TASK)
    monitor = ResourceMonitor(collectors=default_collectors(gpu=False), sink=lambda s, ts: None,
                              store_getter=None, textfile=textfile)  # fmt: skip
    for collector in monitor.collectors:
        collector.start()
    folder.rmdir()
    for _ in range(3):
        monitor.sample_once()
    assert monitor.samples_taken == 3
    warnings = [r.getMessage() for r in caplog.records if "Prometheus textfile" in r.getMessage()]
    assert len(warnings) == 1 and "reported once" in warnings[0]


# -- Prometheus' own tools ---------------------------------------------------------------------
def _tool(name: str) -> str:
    """Debian's prometheus / prometheus-node-exporter binary, or a skip naming the package (a failure in CI)."""
    found = shutil.which(name)
    if found is None:
        package = "prometheus" if name == "promtool" else "prometheus-node-exporter"
        unavailable(f"{name} is not installed: apt-get install {package}", "AETHERIUM_REQUIRE_PROMETHEUS")
    assert found is not None
    return found


def test_promtool_finds_nothing_to_lint_in_the_file(tmp_path: Path, nvml: None) -> None:
    """Prometheus' own linter: names, types, help, the _total of every counter, base units."""
    monitor, _ = sampled_monitor(tmp_path, gpu=True)
    assert monitor.textfile is not None
    text = Path(monitor.textfile.path).read_text()
    checked = subprocess.run([_tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert checked.returncode == 0 and checked.stdout + checked.stderr == "", checked.stdout + checked.stderr
    # ... and it does find what it should: a running count typed gauge without _total
    bad = text.replace("aetherium_monitor_nvml_errors_total", "aetherium_monitor_nvml_errors").replace(
        "# TYPE aetherium_monitor_nvml_errors counter", "# TYPE aetherium_monitor_nvml_errors counter"
    )
    linted = subprocess.run([_tool("promtool"), "check", "metrics"], input=bad, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert linted.returncode != 0 and "_total" in linted.stdout + linted.stderr


def test_node_exporter_serves_the_file_as_written(tmp_path: Path, nvml: None) -> None:
    """A real node_exporter with only its textfile collector scrapes our file without an error, and
    serves every family with its type and every value as the file has it."""
    folder = tmp_path / "textfile"
    folder.mkdir()
    monitor, _ = sampled_monitor(folder, gpu=True)
    assert monitor.textfile is not None
    written = {f.name: f for f in text_string_to_metric_families(Path(monitor.textfile.path).read_text())}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exporter = subprocess.Popen(
        [_tool("prometheus-node-exporter"), f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
         "--collector.textfile", f"--collector.textfile.directory={folder}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        body = None
        deadline = time.monotonic() + 60
        while body is None and exporter.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    body = resp.read().decode()
            except OSError:
                time.sleep(0.1)
        assert body is not None, exporter.stderr.read() if exporter.poll() is not None else "no answer in 60 s"
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)
    served = {f.name: f for f in text_string_to_metric_families(body)}
    assert served["node_textfile_scrape_error"].samples[0].value == 0
    for name, family in written.items():
        assert name in served, name
        assert served[name].type == family.type, name
        assert {tuple(sorted(s.labels.items())): s.value for s in served[name].samples} == {
            tuple(sorted(s.labels.items())): s.value for s in family.samples
        }, name
