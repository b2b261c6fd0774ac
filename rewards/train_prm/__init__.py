"""The PRM training stage, ``python -m rewards.train_prm``: its config (``config``), label sources (``labels``) and
loop (``__main__``)."""
