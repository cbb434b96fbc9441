"""The run folder: config, metrics, summary.json, weights."""
