"""The two stages, siblings: each a function from a checked config and a run folder to record sections."""
