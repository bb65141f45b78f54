"""A WeChat API sandbox: a real HTTP server simulating the endpoints of the fiscal e-bill flow.

`python -m wechat_sandbox --port 8765` runs it; `wechat_sandbox.process.start_sandbox()` starts it
as a subprocess; `wechat_sandbox.client.SandboxAdmin` drives its admin API under `/_sandbox/`.
This module stays import-light: the server code lives in `app.py` and is only imported to serve.
"""
