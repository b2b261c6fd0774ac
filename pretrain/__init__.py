"""Stage 1: pretrain the base model q0 on a synthetic task with a designed support profile."""

from barrierlab.errors import quiet_interrupts_while_starting

quiet_interrupts_while_starting()  # under python -m pretrain[.module] only
