"""`nontax receiver`: the event receiver as a process of its own (uvicorn, one worker: the spool
directory belongs to one process)."""

from __future__ import annotations

import logging
import sys

from wechat_nontax.receiver.config import ConfigError, ReceiverSettings, credentials_from_env
from wechat_nontax.receiver.spool import Spool, SpoolBusy


def serve(dsn: str, *, host: str | None = None, port: int | None = None) -> int:
    import dataclasses

    import uvicorn

    from wechat_nontax.receiver.app import create_app
    from wechat_nontax.receiver.recorder import EventRecorder

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    settings = ReceiverSettings.from_env()
    settings = dataclasses.replace(
        settings, host=host or settings.host, port=port if port is not None else settings.port
    )
    try:
        creds = credentials_from_env()
        spool = Spool(settings.spool_dir)
    except (ConfigError, SpoolBusy) as exc:
        print(f"nontax receiver: {exc}", file=sys.stderr)
        return 2
    budget_ms = int(settings.record_budget_s * 1000)
    app = create_app(creds, settings, EventRecorder(dsn, statement_timeout_ms=budget_ms), spool)
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            workers=1,
            access_log=False,  # the query carries signatures and echostr
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
    finally:
        spool.close()
    return 0
