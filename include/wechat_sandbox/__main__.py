"""`python -m wechat_sandbox [--host H] [--port P] [...]`: serve the sandbox with uvicorn.

One worker (all state lives in this process), no access log (URLs carry access_token),
log level warning. The port defaults to $WECHAT_SANDBOX_PORT, else 8765.
"""

from __future__ import annotations

import argparse
import secrets
import sys

from wechat_sandbox.config import ADMIN_TOKEN_HEADER, Settings, SettingsError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wechat_sandbox", description=__doc__)
    parser.add_argument("--host", help="interface (default $WECHAT_SANDBOX_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default $WECHAT_SANDBOX_PORT or 8765)")
    parser.add_argument("--appid", help="the app's appid (default $WECHAT_SANDBOX_APPID)")
    parser.add_argument("--secret", help="the app's secret (default $WECHAT_SANDBOX_SECRET)")
    parser.add_argument("--card-ids", help="comma-separated card ids insertbill accepts")
    parser.add_argument("--token-ttl", type=float, help="access_token lifetime, seconds (7200)")
    parser.add_argument("--classic-overlap", type=float, help="old classic token overlap, s (300)")
    parser.add_argument("--media-ttl", type=float, help="s_media_id lifetime, seconds (259200)")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level (warning)")
    return parser.parse_args(argv)


def build_settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    if args.appid or args.secret:
        (appid, secret), *_ = settings.apps.items()
        settings.apps = {args.appid or appid: args.secret or secret}
    updates: dict[str, object] = {}
    if args.card_ids is not None:
        updates["card_ids"] = args.card_ids
    if args.token_ttl is not None:
        updates["token_ttl_s"] = args.token_ttl
    if args.classic_overlap is not None:
        updates["classic_overlap_s"] = args.classic_overlap
    if args.media_ttl is not None:
        updates["media_ttl_s"] = args.media_ttl
    settings.update(updates)
    return settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = build_settings(args)
    except SettingsError as exc:
        print(f"wechat_sandbox: {exc}", file=sys.stderr)
        return 2

    if not settings.admin_token:
        # Started by hand (`make sandbox`): a fresh admin token, told to the person who started
        # it. Every harness (tests, demo, make up) passes its own in WECHAT_SANDBOX_ADMIN_TOKEN.
        settings.admin_token = secrets.token_urlsafe(24)
        print(
            f"wechat_sandbox: admin API token (header {ADMIN_TOKEN_HEADER}): "
            f"{settings.admin_token}",
            file=sys.stderr,
        )

    import uvicorn

    from wechat_sandbox.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        access_log=False,
        log_level=args.log_level,
        # A held answer (timeout fault) must not keep a stopping sandbox alive for long.
        timeout_graceful_shutdown=1,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
