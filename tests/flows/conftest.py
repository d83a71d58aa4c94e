"""A pipeline flow run that several flow tests share, so that each pipeline run is paid once."""

from __future__ import annotations

import pytest

from tests.flows.runs import FlowRun, run_pipeline_flow, small_run_overrides, write_corpus


@pytest.fixture(scope="session")
def small_pipeline_run(tmp_path_factory, prefect_api) -> FlowRun:
    """The tiny recipe on a small corpus read whole, run in this process on the session's
    Prefect server, into a fresh workspace. tests/flows/test_caching.py runs it again on the
    same workspace (its first run); tests/flows/test_observability.py reads this flow run's
    logs and artifacts back from the server, which later runs do not change."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path_factory.mktemp("small-run")
    overrides = small_run_overrides(write_corpus(root / "corpus", 300))
    with pytest.MonkeyPatch.context() as mp, \
            temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return run_pipeline_flow(root / "home", overrides)
