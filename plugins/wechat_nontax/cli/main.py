"""`nontax`: the order store from the command line (the package's console script).

    migrate                 apply the schema migrations (a no-op when up to date)
    load FILE               load orders from JSON Lines (bad lines reported, good ones load)
    status                  how many orders are in each status, requests, used-up daily quotas
    attention               the orders that need a person, with their reasons
    history ORDER_ID        an order's row and its attempt history
    reset ORDER_ID...       make orders due again after fixing their data
    link ORDER_ID... | --unauthorized [--limit N] [--source web|app] [--redirect-url URL]
                            the authorisation link of each order waiting for its payer: made
                            (nontax/getbillauthurl) and recorded on the order, or reused while
                            valid; prints one line per order with its URL
    refuse ORDER_ID --reason TEXT [--by NAME]
                            ask for the order to be refused (rejectinsert: the payer is told
                            TEXT, at most 100 characters; it never gets a bill)
    void ORDER_ID --reason TEXT [--by NAME]
                            ask for the order's issued bill to be voided (red-reversed)
    withdraw REQUEST_ID [--note TEXT] [--by NAME]
                            withdraw a request that ended refused or failed: a refusal then no
                            longer keeps its order off issuing

refuse and void only record the request (checked first: a bad one is refused with its reason
and exit code 1); the DAG `nontax_requests` carries it out within minutes. `attention` and
`history` show where it stands.

The database is `AIRFLOW_CONN_NONTAX_ORDERS_DB` (the same Connection the DAG uses) or --dsn;
`link` calls WeChat through the WeChat Connection (`AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT`) and its
shared token and ticket, which need Airflow's Fernet key (`AIRFLOW__CORE__FERNET_KEY`).
"""

from __future__ import annotations

import argparse
import sys

from wechat_nontax.store.connection import connect_dsn, dsn_from_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nontax", description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="libpq URI of the order database")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate")
    load = sub.add_parser("load")
    load.add_argument("file")
    sub.add_parser("status")
    sub.add_parser("attention")
    history = sub.add_parser("history")
    history.add_argument("order_id")
    reset = sub.add_parser("reset")
    reset.add_argument("order_ids", nargs="+")
    reset.add_argument("--note", default="reset by operator")
    link = sub.add_parser("link")
    link.add_argument("order_ids", nargs="*")
    link.add_argument("--unauthorized", action="store_true",
                      help="every order waiting for its payer without a valid link")  # fmt: skip
    link.add_argument("--limit", type=int, default=None, help="at most this many (1000)")
    link.add_argument("--source", choices=("web", "app"), default="web")
    link.add_argument("--redirect-url", default=None)
    for kind in ("refuse", "void"):
        request = sub.add_parser(kind)
        request.add_argument("order_id")
        request.add_argument("--reason", required=True)
        request.add_argument("--by", default=None, help="who asks (default: the login name)")
    withdraw = sub.add_parser("withdraw")
    withdraw.add_argument("request_id", type=int)
    withdraw.add_argument("--note", default="")
    withdraw.add_argument("--by", default=None, help="who decides (default: the login name)")
    receiver = sub.add_parser("receiver")
    receiver.add_argument("--host", default=None, help="interface (NONTAX_RECEIVER_HOST)")
    receiver.add_argument("--port", type=int, default=None, help="port (NONTAX_RECEIVER_PORT)")
    args = parser.parse_args(argv)
    dsn = args.dsn or dsn_from_env()

    if args.command == "receiver":
        from wechat_nontax.receiver.serve import serve

        return serve(dsn, host=args.host, port=args.port)

    if args.command == "migrate":
        from wechat_nontax.store.migrate import MigrationError, current_version, migrate

        try:
            applied = migrate(dsn)
        except MigrationError as exc:
            print(f"migrate: {exc}", file=sys.stderr)
            return 2
        print(f"schema version {current_version(dsn)}; applied now: {applied or 'nothing'}")
        return 0

    if args.command in ("refuse", "void", "withdraw"):
        return _request(dsn, args)

    from wechat_nontax.requests.store import RequestStore, format_request
    from wechat_nontax.store.orders import OrderStore
    from wechat_nontax.wechat.timing import beijing_time

    store = OrderStore(connect_dsn(dsn, application_name="nontax-tools"))
    requests = RequestStore(connect_dsn(dsn, application_name="nontax-tools"))
    try:
        if args.command == "load":
            from wechat_nontax.cli.load import load_lines, read_lines

            report = load_lines(store, read_lines(args.file))
            print(report)
            return 1 if report.rejected or report.held else 0
        if args.command == "link":
            return _links(store, args)
        if args.command == "status":
            for status, count in sorted(store.count_by_status().items()):
                print(f"{status:<14} {count}")
            waiting, unlinked, oldest = store.waiting_for_payer()
            if waiting:
                print(
                    f"{waiting} orders wait for their payer (the oldest loaded "
                    f"{beijing_time(oldest)}), {unlinked} without a valid link: "
                    "nontax link --unauthorized"
                )
            asked = requests.count_by_status()
            if asked:
                print("requests:")
                for kind_status, count in sorted(asked.items()):
                    print(f"  {kind_status:<16} {count}")
            # A used-up daily quota explains due orders that no run sends before midnight.
            for appid, stop in store.live_quota_stops():
                print(
                    f"daily quota of {stop.api} used up for {appid} (errcode {stop.errcode}): "
                    f"no call before {beijing_time(stop.until)}"
                )
            return 0
        if args.command == "attention":
            rows = store.needs_attention()
            for order_id, status, reason, updated_at in rows:
                print(f"{order_id}  [{status}]  {updated_at:%Y-%m-%d %H:%M}  {reason}")
            print(f"{len(rows)} orders need a person")
            waiting = requests.needs_attention()
            for row in waiting:
                print(format_request(row))
            print(f"{len(waiting)} requests to refuse or void need a look (not done, or waiting)")
            return 0
        if args.command == "history":
            row = store.get_row(args.order_id)
            if row is None:
                print(f"no order {args.order_id}", file=sys.stderr)
                return 1
            for key, value in row.items():
                print(f"{key:>17}: {value}")
            print()
            for a in store.history(args.order_id):
                code = "" if a.errcode is None else f" errcode {a.errcode}"
                msg = f" {a.errmsg}" if a.errmsg else ""
                print(f"{a.at:%Y-%m-%d %H:%M:%S}  {a.step:<13} {a.outcome:<14}{code}{msg}"
                      f"  [{a.run_id or '-'}]")  # fmt: skip
            asked = requests.of_order(args.order_id)
            if asked:
                print("\nrequests:")
                for request in asked:
                    print(format_request(request))
            return 0
        if args.command == "reset":
            failed = [i for i in args.order_ids if not store.reset(i, note=args.note)]
            for order_id in failed:
                print(
                    f"{order_id}: not reset (unknown, already finished, mismatched: its bill "
                    "is in the card package, waiting for its payer's authorisation, or held "
                    "by a run right now)",
                    file=sys.stderr,
                )
            print(f"{len(args.order_ids) - len(failed)} orders are due again")
            return 1 if failed else 0
    finally:
        store.close()
        requests.close()
    return 2


def _links(store, args: argparse.Namespace) -> int:
    from wechat_nontax.issuing.auth_links import DEFAULT_LINK_LIMIT, REUSE_MARGIN_S, make_links
    from wechat_nontax.wechat.hook import WeChatNonTaxHook
    from wechat_nontax.wechat.timing import beijing_time

    if bool(args.order_ids) == args.unauthorized:
        print("link: name the orders, or --unauthorized (not both)", file=sys.stderr)
        return 2
    limit = args.limit if args.limit is not None else DEFAULT_LINK_LIMIT
    if not 1 <= limit <= 100_000:
        print("link: --limit must be between 1 and 100000", file=sys.stderr)
        return 2
    order_ids = list(dict.fromkeys(args.order_ids))[:limit] or store.unauthorized_needing_link(
        limit=limit, margin_s=REUSE_MARGIN_S
    )
    hook = WeChatNonTaxHook()
    try:
        results = make_links(store, hook, order_ids, source=args.source,
                             redirect_url=args.redirect_url)  # fmt: skip
    finally:
        hook.close()
    for r in results:
        if r.auth_url is not None:
            print(f"{r.order_id}  {r.auth_url}  ({r.outcome}, valid until "
                  f"{beijing_time(r.expires_at)})")  # fmt: skip
        else:
            print(f"{r.order_id}  [{r.outcome}] {r.note}", file=sys.stderr)
    linked = sum(1 for r in results if r.auth_url is not None)
    print(f"{linked} of {len(results)} orders have a valid link")
    return 0 if linked == len(results) else 1


def _request(dsn: str, args: argparse.Namespace) -> int:
    import getpass

    from wechat_nontax.requests.contract import request_action, withdraw_request

    conn = connect_dsn(dsn, application_name="nontax-tools")
    by = args.by or getpass.getuser()
    try:
        if args.command == "withdraw":
            answer = withdraw_request(conn, args.request_id, by, args.note)
            what, done = f"#{args.request_id}", ""
        else:
            answer = request_action(conn, args.order_id, args.command, args.reason, by)
            what, done = args.order_id, "; the DAG nontax_requests carries it out"
    finally:
        conn.close()
    if not answer.accepted:
        print(f"{args.command} {what}: refused: {answer.reason}", file=sys.stderr)
        return 1
    print(f"{what}: {answer.reason}{done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
