"""Prefect flows: thin wrappers over the run_* functions of ctxvec (installed as ctxvec_flows)."""
