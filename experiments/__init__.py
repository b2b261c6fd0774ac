"""The experiment drivers on top of the stages: scaling and α sweeps, the native-vs-TRL cross-check and the bench."""

from barrierlab.errors import quiet_interrupts_while_starting

quiet_interrupts_while_starting()  # under python -m experiments.<module> only
