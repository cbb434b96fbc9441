"""budgetssl-pretrain: pretrain until the FLOP budget is spent."""

from budgetssl.cli.common import hydra_command
from budgetssl.stages.commands import pretrain_only

main = hydra_command(pretrain_only, "budgetssl-pretrain")
