"""The settings a deployment gives through the environment reach the DAGs' arguments."""

from __future__ import annotations

from datetime import timedelta

from wechat_nontax.dag_arguments import dag_arguments
from wechat_nontax.settings import RETRY_DELAY_ENV


def test_the_first_retry_delay_is_30_s_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv(RETRY_DELAY_ENV, raising=False)
    retries = dag_arguments("NONTAX_UNSET_SCHEDULE", "30 2 * * *")["default_args"]
    assert retries["retry_delay"] == timedelta(seconds=30)
    assert retries["retry_exponential_backoff"] == 2.0
    monkeypatch.setenv(RETRY_DELAY_ENV, "10")
    retries = dag_arguments("NONTAX_UNSET_SCHEDULE", "30 2 * * *")["default_args"]
    assert retries["retry_delay"] == timedelta(seconds=10)
    assert retries["max_retry_delay"] == timedelta(minutes=10)
