"""barrierlab: a small-transformer testbed that makes the base model barrier observable.

Shared pieces used by every stage: the typed config system, the synthetic tasks, the tokenizer,
the two policy classes (tiny Llama and the theory's log-linear model) and the run-folder helpers.
"""
