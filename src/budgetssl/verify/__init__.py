"""budgetssl-verify: a run folder's claims checked from the folder's own files, as a benchmark's compliance
checker checks a result from its own logs (MLPerf Training's compliance checker).

One module per concern: `folder` reads a run folder (and says which file is missing when it is not one),
`naming` checks its name against its saved config, `flops` re-derives the step's cost from that config on
meta tensors, `accounting` checks the record's arithmetic against itself and metrics.jsonl (budget,
transfer, probe, ladder rung), `digest` checks the weights file; `checks` runs them in order and
`marks` turns the verdicts into what budgetssl-report prints.
"""
