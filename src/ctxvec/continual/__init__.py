"""Continual updates of the encoder: drift between versions (and, next, replay and the gate)."""
