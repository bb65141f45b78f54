-- A daily quota answer (45009 on any call, 72057 "today insert limit" on insertbill), shared by
-- every batch, run and worker like the access token: one row per appid and call ("api", the
-- step that got it: token, upload, insert, authorization...). Until `stopped_until` (the next
-- midnight Beijing time, when WeChat resets its daily quotas) that call is not made at all:
-- a batch reads the row before each call instead of spending one to find out.
CREATE TABLE nontax.api_quota (
    appid          text NOT NULL,
    api            text NOT NULL,
    stopped_until  timestamptz NOT NULL,
    errcode        integer,                -- the answer that stopped it
    errmsg         text,
    stopped_at     timestamptz NOT NULL DEFAULT now(),   -- the latest answer
    stopped_since  timestamptz NOT NULL DEFAULT now(),   -- the first answer of this stop
    run_id         text,                   -- the run whose call got the answer
    stop_count     bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (appid, api),
    CONSTRAINT api_quota_api_nonempty CHECK (api <> '')
);
