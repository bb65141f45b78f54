"""`make demo`: the whole pipeline on 200 demo orders against the WeChat sandbox, in one go.

1. Postgres: NONTAX_DEMO_DB when set (an empty database: it is migrated, never dropped); else
   the server on 127.0.0.1:5432 when it lets user postgres in, with a database `nontax_demo`
   dropped and created afresh; else an embedded Postgres (`embedded_pg`, the pgserver package)
   with its data under .run/pgdata. NONTAX_DEMO_FORCE_EMBEDDED=1 skips the local server.
2. The sandbox, on a free port, in its own process group.
3. 200 orders with real bill PDFs under .run/demo/pdfs, written as JSON Lines to
   .run/demo/orders.jsonl and loaded like `make load-orders`. Six of them carry a planted
   problem (`PLANTED`) and four more lines cannot load at all (`_unloadable`); two transient
   sandbox faults are switched on (`FAULTS`), which the run must ride out.
4. One run of the DAG (`dag.test()`, what `airflow dags test` runs), log in
   .run/demo/dag-test.log. One order's refusal is asked for before it (`make refuse`): the run
   leaves it alone.
5. The run's report, task states and the orders' end states, checked against what was planted.
6. One issued bill's void is asked for (`make void`), and one run of the DAG `nontax_requests`
   refuses the one order and voids the other bill (log in .run/demo/requests-test.log).
7. Payers who authorise after the load (`late_payers`): six orders loaded unauthorised, their
   links made, four payers authorise, one declines (WeChat's events pushed by the sandbox's
   pusher to a receiver process, log in .run/demo/receiver/receiver.log), and one run of
   `nontax_waiting` issues the four (log in .run/demo/waiting-test.log).

Everything started is stopped again, also on Ctrl-C. The run itself ends "failed" by design: the
planted problems need a person. The demo succeeds (exit 0) when every good order's bill is in
the sandbox exactly once and every planted problem ended where it should, with its reason.
"""
