"""`python -m nontax_dev.demo` (`make demo`): exit 0 when the demo went as planned, 1 when not,
2 when it could not run, 130 when interrupted."""

from __future__ import annotations

import signal
import sys
import time
import traceback

from nontax_dev.demo.report import Console
from nontax_dev.demo.run import run_demo


def _stop_on_sigterm() -> None:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main() -> int:
    started = time.monotonic()
    console = Console(started)
    _stop_on_sigterm()
    print("nontax demo: 200 fiscal e-bills through the DAG against the WeChat sandbox")
    try:
        code = run_demo(console)
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started is stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into a message
        traceback.print_exc()
        print(f"\ndemo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    console.step(f"done; everything the demo started is stopped (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
