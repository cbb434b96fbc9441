"""budgetssl-transfer: fine-tune a segmentation head on a pretrained run or a random init."""

from budgetssl.cli.common import hydra_command
from budgetssl.stages.commands import transfer_only

main = hydra_command(transfer_only, "budgetssl-transfer")
