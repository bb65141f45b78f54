"""`make chaos`: run the DAG again and again under random WeChat faults and check the promise.

The promise: every order ends inserted exactly once, or with a recorded reason, or still due;
never a second bill; never a secret in the open. Each run of `make chaos RUNS=n SEED=s`:

1. seeds 16-32 orders with fresh ids (a few with bad data, one maybe not authorised or
   rejected by WeChat, one maybe whose payer authorises late or refuses the bill after a first
   72038) into an order database created for this invocation; a run may also have a daily
   insert limit (72057) below its number of orders;
2. switches on a random mix of sandbox faults, drawn from SEED and the run's number: latency,
   latency spikes past the client's timeout, HTTP 5xx, timeouts (the call is handled, its answer
   held past the client's timeout), -1 (also four in a row for one order, which fails it),
   72036, 45011, 45009, token expiry mid-run, and an answer lost after a successful insert;
   every rule has its own seed, so the sandbox's draws repeat; some runs also ask for a good
   order's refusal before the run and another's void after it (`make refuse` / `make void`),
   and some of those answer 45009 to every refusal (or void) of the day (a request's quota);
   some ask for refusals of orders late in the batches once the first bills arrive (while the
   batches run); in some, both DAGs run at one run id (as their scheduled runs at 02:30 do):
   once a batch holds its orders, the requests DAG's tasks run with the issuing run's run id
   beside it;
3. runs the DAG (`dag.test()`, the real DAG file: claim, token, mapped issue, announce,
   report, with Airflow's own task retries);
4. acts as the person on duty: an `issue_bills` instance that is red while one of its orders
   failed or is still due is cleared (with `announce_bills` and `report` downstream) and run
   again, up to `--rerun-rounds` times with the faults still on; then the person "fixes the
   cause" (faults off), clears what is still red once more, and starts a new run of the same
   orders if some are still due now; orders with invalid data are not re-run (a person fixes
   the data first); the requests DAG `nontax_requests` runs after the issuing run with the
   faults on, and again after the fix while a request is pending; before that last round the
   late payers answer (getauthdata then says "auth success" or "reject insert"), in some runs
   getauthdata's daily quota runs out at the first look (45009 once; a few good orders were
   then left out of the first run, so that the last one's batch mixes them with the looks),
   and the 15-minute wait of every order waiting for its authorisation is shortened (time,
   not logic);
5. checks the invariants against the sandbox's own state (`SandboxAdmin.bills()`, `.orders()`
   with per-order successes, `.media()`, `.tokens()`, `.faults()` with their hits) and the
   order database, once with the faults still on and once at the end:
   - no order inserted twice (sandbox successes <= 1, one `inserted` history row);
   - every order inserted, ended with a reason (invalid, failed, rejected, duplicate, refused,
     cancelled), or still due; at the end, still due only while waiting for a time
     (`not_before`: an authorisation, a daily quota), never stuck, and no lease left held;
   - the database agrees with the sandbox: each inserted order has the sandbox's bill with the
     same code and openid, each `duplicate` has a bill, and at the end no order that the
     database calls failed, invalid or rejected has a bill;
   - refusals and voids: a refused order has no bill and WeChat has its refusal; a cancelled
     one had its bill inserted and is INVOICE_REIMBURSE_CANCEL on WeChat; no order both refused
     and inserted on WeChat; each request done at most once (one done request per order and
     kind, at most one change to CANCEL), and a done request's order is refused / cancelled;
     no insertbill for an order arrives later than `IN_FLIGHT_S` after its refusal was asked
     (from the sandbox's call log);
   - orders with bad data end `invalid` and WeChat never hears of them (no insertbill naming
     them, no PDF uploaded under their name);
   - token fetches (`nontax.access_token.fetch_count`, and the tokens the sandbox issued) are no
     more than the token expiries injected + 1;
   - no insertbill for an order after getauthdata said "never auth" or "reject insert" (until
     it said "auth success"), from the sandbox's call log;
   - no call of an API after its daily quota stop was recorded in `nontax.api_quota` (calls
     that arrive within `IN_FLIGHT_S` of the record were past their check already), and every
     daily quota answer recorded there, from the sandbox's call log; no order waits for the
     quota of a call it does not need (getauthdata's, when it is not waiting for its payer);
   - no batch loses its hold (no fault takes one away), and a requests run of the same run id
     ends no claim or hold of the issuing run;
   - no access token issued by the sandbox, nor the app secret, in the order database's texts
     (reasons, errmsgs, history), in Airflow's XCom or rendered fields, in the run's output, or
     (at the end) in the task log files.
A table of runs, faults and violations is printed; any violation exits 1.

Why in one process, and what is shortened: `airflow dags test` costs 10-15 s a run (Airflow's
import, parsing, migrating checks). Here Airflow is imported once, the DAG file is parsed once
and the public `DAG.test()` runs it again and again against one migrated SQLite metadata
database (copied from a template made once by `airflow db migrate`). A run then costs a few
seconds. What the person on duty sees and does goes through Airflow's REST API v2, as the UI's
does, from an `airflow api-server` on that database (nontax_dev.chaos.on_duty): the red
instances, the claim's batches (its XCom), the XComs and rendered fields searched for secrets,
and the clear of the red instances with their downstream tasks. Running what the clear made
ready is the one step without a public interface in this process (see nontax_dev.chaos.on_duty:
the loop of `DAG.test()` itself, private to Airflow 3.3, pinned, checked at start).
Only time is shortened, never logic: the batch operators' transient-error budget
(`time_budget_s`, 300 s in the DAG) is 6 s here and Airflow's retry delay (30 s doubling) is
1 s doubling to 2 s, the WeChat Connection's timeout is 2 s and the sandbox's held answers and
spikes last 3 s. Everything else is the DAG file as deployed.

A run's plan and the sandbox's draws repeat from (SEED, run): `python -m nontax_dev.chaos
--seed S --first-run N --runs 1` runs run N again (thread timing is the machine's own).

Each run starts from a reset sandbox, an empty token cache (so that fetches count per run) and
no recorded quota stop (the reset sandbox is a new day);
orders of earlier runs stay in the database, and every DAG run names its own orders
(`order_ids`), as a person targeting a run would.
"""
