"""budgetssl-run: pretrain, then transfer, into one record."""

from budgetssl.cli.common import hydra_command
from budgetssl.stages.commands import pretrain_then_transfer

main = hydra_command(pretrain_then_transfer, "budgetssl-run")
