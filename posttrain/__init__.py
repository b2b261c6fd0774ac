"""Stage 2: post-train a base model by policy gradient (native engine or TRL)."""

from barrierlab.errors import quiet_interrupts_while_starting

quiet_interrupts_while_starting()  # under python -m posttrain[.module] only
