"""budgetssl-plan: what a sweep will cost before it runs, in FLOPs, GPU-hours, kWh and CO2.

It takes budgetssl-run's overrides and `--multirun` sweeps and, without training or opening a dataset,
prices every job budgetssl-run would run: its steps and FLOPs at each stage, exactly as the run will
spend them (price.py), their cost on `plan.device` at an MFU from evidence or a stated assumption
(cost.py), the jobs already completed in their run folders (skipped, not counted), the ones that would
fail (not counted) and what the user should know before spending (warnings.py); then one table, plan.csv
and plan.json (output.py). jobs.py expands the sweep as Hydra does; sweep.py puts them together.
"""
