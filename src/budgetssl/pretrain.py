"""`python -m budgetssl.pretrain ...` (what torchrun starts) is `budgetssl-pretrain ...`."""

from budgetssl.cli.pretrain import main

if __name__ == "__main__":
    main()
