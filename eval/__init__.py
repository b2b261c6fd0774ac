"""Stage 3: exact evaluation of checkpoints, the report and the barrier experiments."""

from barrierlab.errors import quiet_interrupts_while_starting

quiet_interrupts_while_starting()  # under python -m eval[.module] only
