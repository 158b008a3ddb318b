"""Sensor and fleet simulators and fault tools for trying and testing Edge Agent.

The command line is ``edge-sim`` (``simulators/cli.py``); tests use the same pieces in-process:
``run_sensors`` for readings, ``LinkProxy`` / ``ThreadedLink`` for link faults.
"""

from simulators.link import LinkProxy
from simulators.link_state import LinkMode, LinkState
from simulators.link_thread import ThreadedLink
from simulators.sensor_report import SensorReport
from simulators.sensor_set import SensorOptions
from simulators.sensors import run_sensors

__all__ = [
    "LinkMode",
    "LinkProxy",
    "LinkState",
    "SensorOptions",
    "SensorReport",
    "ThreadedLink",
    "run_sensors",
]
