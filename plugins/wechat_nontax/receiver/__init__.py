"""The receiver of WeChat's callback events (the payer's authorisation), a web service of its own.

crypto: the signatures and the AES envelope (pure); events: the XML and the event's fields (pure);
callback: a request's verification from query and body to an event (pure); config: the token,
keys and appid; spool: the durable local queue for events the database could not take at once;
recorder: the write into the order store; app: the FastAPI service; serve: the process.
"""
