"""Stage 3: exact evaluation of checkpoints, the figures and report, and the analysis of the rate experiments' results."""

from barrierlab.errors import quiet_interrupts_while_starting

quiet_interrupts_while_starting()  # under python -m eval[.module] only
