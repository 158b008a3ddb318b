"""The three receivers the ingest benchmark compares, each run in a fresh process on one core.

    python -m bench.ingest_contenders {paho,naive,agent} --port P --count N --qos Q --workdir D

Each one first connects with a persistent session and subscribes (``--subscribe-only``), so the
broker queues the readings published meanwhile; the timed run then drains that backlog and
prints JSON: readings/s from the first reading to the last one processed, and peak RSS.

- ``paho``: paho-mqtt counting messages in ``on_message``: the ceiling of a paho-based agent.
- ``naive``: paho, ``json.loads``, a 1 s window per sensor, one SQLite commit per reading.
- ``agent``: Edge Agent itself: MQTT source, bus, ``window`` module, outbox.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sqlite3
import sys
import textwrap
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def paho_client(client_id: str) -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)


def subscribe_only(port: int, qos: int, client_id: str) -> None:
    client = paho_client(client_id)
    client.connect("127.0.0.1", port)
    client.subscribe("sensors/#", qos)
    client.loop(1.0)
    client.loop(0.2)
    client.disconnect()


def run_paho(port: int, count: int, qos: int, naive: bool, workdir: Path) -> dict[str, float]:
    done = threading.Event()
    state = {"n": 0, "first": 0.0}
    windows: dict[str, list[float]] = {}
    db = None
    if naive:
        db = sqlite3.connect(workdir / "naive.db", check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS readings (sensor TEXT, ts REAL, value REAL)")
        db.execute("CREATE TABLE IF NOT EXISTS summaries (sensor TEXT, start REAL, data TEXT)")

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if not state["n"]:
            state["first"] = time.perf_counter()
        state["n"] += 1
        if naive:
            assert db is not None
            body = json.loads(message.payload)
            sensor = message.topic[8:]
            ts, value = body["ts"], body["value"]
            db.execute("INSERT INTO readings VALUES (?, ?, ?)", (sensor, ts, value))
            db.commit()
            start = ts - ts % 1.0
            acc = windows.get(sensor)
            if acc is None or acc[0] != start:
                if acc is not None:
                    summary = {"count": acc[1], "mean": acc[2] / acc[1], "min": acc[3], "max": acc[4]}
                    row = (sensor, acc[0], json.dumps(summary))
                    db.execute("INSERT INTO summaries VALUES (?, ?, ?)", row)
                    db.commit()
                windows[sensor] = [start, 1, value, value, value]
            else:
                acc[1] += 1
                acc[2] += value
                acc[3] = min(acc[3], value)
                acc[4] = max(acc[4], value)
        if state["n"] >= count:
            state["last"] = time.perf_counter()
            done.set()

    client = paho_client("bench-naive" if naive else "bench-paho")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not done.wait(600):
        raise SystemExit(f"only {state['n']} of {count} readings arrived")
    client.loop_stop()
    client.disconnect()
    return {"rate": count / (state["last"] - state["first"]), "rss_mb": peak_rss_mb()}


def agent_config(workdir: Path, port: int, qos: int, ack: str = "checkpoint") -> Path:
    path = workdir / "agent.toml"
    path.write_text(textwrap.dedent(f"""
        device_id = "bench"
        data_dir = "{workdir / 'agent-data'}"
        log_level = "WARNING"
        [[sources]]
        name = "local"
        type = "mqtt"
        url = "mqtt://127.0.0.1:{port}"
        topics = ["sensors/#"]
        qos = {qos}
        client_id = "bench-agent"
        ack = "{ack}"
        [[modules]]
        name = "win"
        use = "window"
        inputs = ["sensors/#"]
        sync = true
        [modules.with]
        every = "1s"
        stats = ["count", "mean", "min", "max"]
    """))
    return path


def run_agent(
    port: int, count: int, qos: int, workdir: Path, subscribe: bool, ack: str = "checkpoint"
) -> dict[str, float]:
    from agent.config import load_config
    from agent.supervisor import Agent

    agent = Agent(load_config(agent_config(workdir, port, qos, ack)))
    result: dict[str, float] = {}

    async def watch() -> None:
        # Watch from the very start: a resumed session streams its backlog before the SUBACK
        # that makes the agent ready, so waiting for ready would miss the start of the drain.
        totals = agent.counters.totals
        while not totals.get(("source:local", "accepted")):
            await asyncio.sleep(0.0005)
        first = time.perf_counter()
        while totals.get(("module:win", "processed"), 0) < count:
            await asyncio.sleep(0.002)
        result["rate"] = count / (time.perf_counter() - first)

    async def main() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(agent.run(on_ready=ready.set))
        if subscribe:
            await ready.wait()
        else:
            await watch()
        agent.request_stop()
        await task

    asyncio.run(main())
    result["rss_mb"] = peak_rss_mb()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("contender", choices=["paho", "naive", "agent", "agent-ack-on-receipt"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--qos", type=int, default=0)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--subscribe-only", action="store_true")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    if args.contender.startswith("agent"):
        ack = "receipt" if args.contender == "agent-ack-on-receipt" else "checkpoint"
        out = run_agent(args.port, args.count, args.qos, args.workdir, args.subscribe_only, ack)
    elif args.subscribe_only:
        subscribe_only(args.port, args.qos, f"bench-{args.contender}")
        out = {}
    else:
        out = run_paho(args.port, args.count, args.qos, args.contender == "naive", args.workdir)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
