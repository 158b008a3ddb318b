"""Rows that set one benchmark's figure beside another's from the same run: Edge Agent against
Node-RED doing the same flow, with the targets the product claims."""

from __future__ import annotations

from bench.common import Result


def _find(results: list[Result], benchmark: str, metric_start: str) -> Result | None:
    for result in results:
        if result.benchmark == benchmark and result.metric.startswith(metric_start) and result.value:
            return result
    return None


def against_nodered(results: list[Result]) -> list[Result]:
    """Agent vs Node-RED: throughput at least Node-RED's, idle RSS at most a third of it, start
    to ready at most 0.5 s. Nothing when either side is missing from the run."""
    pairs = [
        ("readings/s, QoS 1, same flow", ("ingest", "readings/s, QoS 1, broker"),
         ("node-red", "readings/s"), "≥ 1× Node-RED", lambda agent, red: agent >= red),
        ("idle RSS", ("agent", "idle RSS"), ("node-red", "idle RSS"),
         "≤ ⅓ of Node-RED", lambda agent, red: agent <= red / 3),
        ("start to ready", ("agent", "start to ready"), ("node-red", "start to ready"),
         "≤ 0.5 s", lambda agent, red: agent <= 0.5),
    ]
    rows = []
    for metric, ours, theirs, target, met in pairs:
        agent, red = _find(results, *ours), _find(results, *theirs)
        if agent is None or red is None:
            continue
        rows.append(Result(
            benchmark="vs Node-RED", metric=metric, value=agent.value, unit=agent.unit,
            baseline_name="Node-RED", baseline=red.value, target=target, met=met(agent.value, red.value),
            runs=agent.runs, baseline_runs=red.runs, note="both measured in this run",
        ))
    return rows
