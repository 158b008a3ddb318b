"""The ingest flow in Node-RED, the tool many would pick instead: readings/s sustained, RSS idle
and under load, and time from start to ready.

Flow: an MQTT-in node (``sensors/#``, QoS 1, JSON) -> a function node with the agent's window
(1 s tumbling windows of reading time per sensor: count, mean, min, max) -> an MQTT-out node at
QoS 1. Node-RED is installed from the npm registry into ``~/.cache/edge-agent-bench/node-red``
(the newest release whose ``engines.node`` this machine's node satisfies), once.

Method, as for the agent (bench/loadgen.py): the broker is pinned to core 0 and Node-RED to
core 1. Node-RED starts once to make its persistent session (start-to-ready and idle RSS are
measured then), stops, the broker is pre-filled, and Node-RED starts again and drains. The
function node itself times its first to its last reading (the agent's definition); RSS is
sampled during the drain; every summary's ``count`` is added up to check nothing was lost.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bench.common import Result
from bench.loadgen import BenchBroker, OutputWatcher, prefill, time_to_ready
from tests.conftest import free_port

CACHE = Path(os.environ.get("EDGE_BENCH_CACHE", Path.home() / ".cache" / "edge-agent-bench"))
CLIENT_ID = "bench-nodered"

# The function node's code, in the three parts Node-RED keeps apart. The window is the agent's
# (modules/window.py): emitted when a newer window opens for its sensor, or by the clock
# TIMEOUT s after its end; a reading for a window already emitted is late and left out.
INITIALIZE = """
const TIMEOUT = 2;
context.set("W", new Map());       // sensor -> open window {start, n, sum, min, max}
context.set("closed", new Map());  // sensor -> end of its last emitted window
context.set("S", {n: 0, late: 0, first: 0, expected: Number(env.get("BENCH_EXPECTED") || 0)});
const timer = setInterval(() => {
    const W = context.get("W"), closed = context.get("closed");
    const horizon = Date.now() / 1000 - TIMEOUT;
    const out = [];
    for (const [sensor, w] of W) {
        if (w.start + 1 <= horizon) {
            out.push({topic: "out/win/" + sensor, payload: {sensor, start: w.start,
                end: w.start + 1, count: w.n, mean: w.sum / w.n, min: w.min, max: w.max}});
            W.delete(sensor);
            closed.set(sensor, w.start + 1);
        }
    }
    if (out.length) node.send([out, null]);
}, 250);
context.set("timer", timer);
"""
FUNCTION = """
const p = msg.payload;
const isObject = p !== null && typeof p === "object";
const v = isObject ? p.value : p;
const S = context.get("S");
S.n++;  // every reading handled counts toward the rate, as in the agent
if (S.n === 1) S.first = Date.now();
const done = () => S.n === S.expected ? {topic: "bench/stats", payload: {count: S.n,
    late: S.late, first: S.first, last: Date.now()}} : null;
if (typeof v !== "number" || !Number.isFinite(v)) return [null, done()];
const ts = isObject && typeof p.ts === "number" ? p.ts : Date.now() / 1000;
const sensor = msg.topic.startsWith("sensors/") ? msg.topic.slice(8) : msg.topic;
const start = ts - (ts % 1);
const W = context.get("W"), closed = context.get("closed");
let out = null;
let w = W.get(sensor);
if (w !== undefined && w.start !== start) {
    if (start < w.start) { S.late++; return [null, done()]; }
    out = {topic: "out/win/" + sensor, payload: {sensor, start: w.start, end: w.start + 1,
        count: w.n, mean: w.sum / w.n, min: w.min, max: w.max}};
    closed.set(sensor, w.start + 1);
    w = undefined;
}
if (w === undefined) {
    if (start < (closed.get(sensor) || 0)) { S.late++; return [out, done()]; }
    W.set(sensor, {start, n: 1, sum: v, min: v, max: v});
} else {
    w.n++; w.sum += v;
    if (v < w.min) w.min = v; else if (v > w.max) w.max = v;
}
return [out, done()];
"""
FINALIZE = 'clearInterval(context.get("timer"));'


@dataclass
class NodeRed:
    """An installed Node-RED."""

    red_js: Path
    version: str


@dataclass
class Figures:
    """Medians over runs, with every run kept."""

    version: str
    rate: list[float]
    idle_rss_mb: list[float]
    load_rss_mb: list[float]
    ready_s: list[float]
    count: int
    lost: int


# -- installing --------------------------------------------------------------------------------


def install() -> NodeRed | str:
    """Node-RED from the npm registry (cached), or why it cannot be had."""
    if not shutil.which("node") or not shutil.which("npm"):
        return "node and npm are not installed"
    node = _run(["node", "--version"]).strip().lstrip("v")
    try:
        version = _pick_version(node)
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        cached = sorted(CACHE.glob("node-red/*/node_modules/node-red/red.js"))
        if cached:  # offline, but installed before
            return NodeRed(cached[-1], cached[-1].parts[-4])
        return f"the npm registry did not answer ({error})"
    prefix = CACHE / "node-red" / version
    red_js = prefix / "node_modules" / "node-red" / "red.js"
    if not red_js.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        try:
            _run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                  "--omit=dev", "--loglevel=error", f"node-red@{version}"], timeout=900)
        except (OSError, subprocess.SubprocessError) as error:
            shutil.rmtree(prefix, ignore_errors=True)
            return f"npm install node-red@{version} failed: {error}"
    return NodeRed(red_js, version)


def _pick_version(node: str) -> str:
    """The newest release whose ``engines.node`` (a ``>=X.Y`` floor) this node satisfies."""
    latest = _run(["npm", "view", "node-red", "version"]).strip()
    floors = json.loads(_run(["npm", "view", "node-red@>=3", "version", "engines.node",
                              "--json"]))
    candidates = [(_numbers(f["version"]), str(f["version"])) for f in floors
                  if re.fullmatch(r"[\d.]+", f["version"])
                  and _numbers(node) >= _numbers(f.get("engines.node", "0").lstrip(">= "))]
    if not candidates:
        raise ValueError(f"no Node-RED release runs on node {node} (latest: {latest})")
    return max(candidates)[1]


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _run(command: list[str], timeout: float = 120) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=timeout)
    return str(done.stdout)


# -- one run -----------------------------------------------------------------------------------


def _flow(port: int) -> list[dict[str, object]]:
    broker = {"id": "broker", "type": "mqtt-broker", "name": "bench", "broker": "127.0.0.1",
              "port": str(port), "clientid": CLIENT_ID, "autoConnect": True, "usetls": False,
              "protocolVersion": "4", "keepalive": "60", "cleansession": False,
              "autoUnsubscribe": False, "birthTopic": "", "closeTopic": "", "willTopic": ""}

    def node(id_: str, type_: str, wires: list[list[str]], **rest: object) -> dict[str, object]:
        return {"id": id_, "type": type_, "z": "tab", "wires": wires, **rest}

    return [
        {"id": "tab", "type": "tab", "label": "bench"},
        broker,
        node("in", "mqtt in", [["window"]], topic="sensors/#", qos="1", datatype="json",
             broker="broker", nl=False, rap=False, inputs=0),
        node("window", "function", [["out"], ["out"]], name="1 s window", func=FUNCTION,
             initialize=INITIALIZE, finalize=FINALIZE, outputs=2, libs=[]),
        node("out", "mqtt out", [], topic="", qos="1", retain="false", broker="broker"),
        node("ping", "mqtt in", [["pong"]], topic="bench/ping", qos="0", datatype="buffer",
             broker="broker", nl=False, rap=False, inputs=0),
        node("pong", "change", [["out"]], rules=[
            {"t": "set", "p": "topic", "pt": "msg", "to": "bench/pong", "tot": "str"}]),
    ]


class _Process:
    """Node-RED on core 1, its output in a log file."""

    def __init__(self, red: NodeRed, userdir: Path, expected: int) -> None:
        command = ["node", str(red.red_js), "--userDir", str(userdir),
                   "--settings", str(userdir / "settings.js")]
        if shutil.which("taskset"):
            command = ["taskset", "-c", "1", *command]
        self.log = (userdir / "node-red.log").open("ab")
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log,
                                        env={**os.environ, "BENCH_EXPECTED": str(expected)})

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


def _prepare(userdir: Path, port: int) -> None:
    userdir.mkdir(parents=True, exist_ok=True)
    (userdir / "flows.json").write_text(json.dumps(_flow(port)))
    (userdir / "settings.js").write_text(
        "module.exports = {\n"
        f"  uiHost: '127.0.0.1', uiPort: {free_port()},\n"
        "  httpAdminRoot: false, httpNodeRoot: false,  // no editor: the flow is all it runs\n"
        "  flowFile: 'flows.json', credentialSecret: false,\n"
        "  diagnostics: {enabled: false}, functionExternalModules: false,\n"
        "  logging: {console: {level: 'warn', metrics: false, audit: false}},\n"
        "};\n"
    )


def _one_run(red: NodeRed, count: int, workdir: Path) -> tuple[float, float, float, float, int]:
    """(readings/s, idle RSS MB, RSS under load MB, start to ready s, readings lost)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with BenchBroker(workdir, cpu=0) as broker:
        userdir = workdir / f"node-red-{broker.port}"
        _prepare(userdir, broker.port)
        first = _Process(red, userdir, count)  # makes the persistent session
        try:
            ready = time_to_ready(broker.port, "bench/ping", "bench/pong", first.started)
            time.sleep(2.0)
            idle = first.rss_mb()
        finally:
            first.stop()
        prefill(broker.port, count)
        with OutputWatcher(broker.port, "out/#") as summaries, \
                OutputWatcher(broker.port, "bench/stats") as stats:
            second = _Process(red, userdir, count)
            peak = _RssPeak(second)
            try:
                if not stats.wait_total(count, timeout=max(120.0, count / 2000)):
                    raise RuntimeError(f"Node-RED did not get through {count} readings; see "
                                       f"{userdir / 'node-red.log'}")
                summaries.wait_total(count, timeout=10.0)  # the last windows close by clock
            finally:
                peak.stop()
                second.stop()
    assert stats.last is not None
    rate = count / max((stats.last["last"] - stats.last["first"]) / 1000, 1e-3)
    # A reading whose window the clock had already closed is late: counted, not summarised.
    return rate, idle, peak.mb, ready, count - summaries.total - int(stats.last["late"])


class _RssPeak:
    """The highest RSS of a process, sampled every 0.1 s on a thread."""

    def __init__(self, process: _Process) -> None:
        self.mb = 0.0
        self._process = process
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            try:
                self.mb = max(self.mb, self._process.rss_mb())
            except (OSError, StopIteration):
                return


# -- the benchmark -----------------------------------------------------------------------------


@cache
def figures(quick: bool) -> Figures | str:
    """Node-RED's figures (medians over runs), or why there are none. Cached, so that another
    benchmark (the agent's ingest) can put them beside its own in the same run."""
    red = install()
    if isinstance(red, str):
        return red
    count, runs = (20_000, 1) if quick else (200_000, 3)
    samples = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-nodered-") as tmp:
        for index in range(runs):
            try:
                samples.append(_one_run(red, count, Path(tmp) / f"run-{index}"))
            except (RuntimeError, OSError, TimeoutError) as error:
                # Said in the table rather than failing every other benchmark of the run.
                return f"Node-RED {red.version} was installed but its run failed: {error}"
    rate, idle, load, ready, lost = (list(column) for column in zip(*samples, strict=True))
    return Figures(red.version, rate, idle, load, ready, count, max(lost))


def run(quick: bool) -> list[Result]:
    found = figures(quick)
    if isinstance(found, str):
        note = f"Node-RED not measured: {found}"
        return [Result("node-red", "readings/s, QoS 1, mqtt in → window → mqtt out", 0.0, "/s",
                       note=note)]
    base = f"Node-RED {found.version}, one core"
    lost = f"; {found.lost} readings missing from its summaries" if found.lost else ""
    return [
        Result("node-red", "readings/s, QoS 1, mqtt in → window → mqtt out",
               statistics.median(found.rate), "/s", runs=found.rate,
               note=f"{base}, {found.count:,} pre-filled readings{lost}"),
        Result("node-red", "idle RSS", statistics.median(found.idle_rss_mb), "MB",
               runs=found.idle_rss_mb, note=f"{base}, 2 s after ready"),
        Result("node-red", "RSS under load", statistics.median(found.load_rss_mb), "MB",
               runs=found.load_rss_mb, note=f"{base}, peak while draining"),
        Result("node-red", "start to ready", statistics.median(found.ready_s), "s",
               runs=found.ready_s, note=f"{base}, exec to first echo through MQTT"),
    ]


if __name__ == "__main__":
    for result in run(quick=os.environ.get("QUICK") == "1"):
        print(result)
