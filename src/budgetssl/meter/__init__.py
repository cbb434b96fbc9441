"""Metering: FLOPs of a real step, budgets turned into plans, energy and CO2."""
