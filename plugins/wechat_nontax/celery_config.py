"""Celery's settings for this project's workers (`[celery] celery_config_options =
wechat_nontax.celery_config.CELERY_CONFIG`, in docker/airflow-celery.env): Airflow's own, and
`wechat_nontax.preload` imported by each worker's main process before it forks its pool, so
that no task process imports it again (see that module)."""

from __future__ import annotations

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

CELERY_CONFIG = {**DEFAULT_CELERY_CONFIG, "imports": ("wechat_nontax.preload",)}
