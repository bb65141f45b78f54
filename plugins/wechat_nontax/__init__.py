"""Issuing fiscal e-bills into WeChat card packages, on Airflow.

The rooms: `wechat` (the client), `store` (the order database), `issuing` and `requests` (the
two pipelines), `ui` (the Bills page), `cli` (the unit's commands) and `settings` (every name and
default). Importing the package imports nothing else: each component imports what it uses.
"""
