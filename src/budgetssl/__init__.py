"""budgetssl: visual pretraining under fixed, metered compute budgets."""

__version__ = "0.1.0"
