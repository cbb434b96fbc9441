"""Errors a user can act on: each message names the problem and the fix."""


class BudgetSSLError(Exception):
    """Base for errors caused by input (config, data, budget), not by a bug."""


class ConfigError(BudgetSSLError):
    """A config value or combination is invalid."""


class BudgetError(BudgetSSLError):
    """The FLOP budget cannot be honoured (e.g. smaller than one step)."""


class DataError(BudgetSSLError):
    """A data file is missing or unreadable."""
