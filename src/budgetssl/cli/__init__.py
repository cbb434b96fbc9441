"""Console scripts; each takes Hydra overrides (budgetssl-plot and -report take paths)."""
