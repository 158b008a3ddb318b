"""Sensor and fleet simulators and fault tools for trying and testing Edge Agent."""
