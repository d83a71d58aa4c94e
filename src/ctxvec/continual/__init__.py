"""Continual updates of the encoder, one concept per module: ``plan`` (what is new), ``train``
(the challenger, with replay and regularisers), ``evaluate`` (champion and challenger on the same
held-out data), ``gate``, ``register`` and ``drift``. ``ctxvec.stages.continual`` declares them as
stages and runs them in order."""
