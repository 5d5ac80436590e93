"""``python -m examples.emulator --port N [--scenario NAME|module:attr]``: serve until Ctrl-C.

The clock follows wall time here (cache entries expire after real minutes), unlike in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import threading

from .clock import Clock
from .script import SCENARIOS, load_scenario
from .server import Emulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument(
        "--scenario", default="echo", help=f"one of {sorted(SCENARIOS)} or 'package.module:attribute' (a script)"
    )
    args = parser.parse_args(argv)
    try:
        script = load_scenario(args.scenario)
    except (ValueError, ImportError, AttributeError, TypeError) as exc:
        parser.error(f"--scenario {args.scenario}: {exc}")
    with Emulator(script, host=args.host, port=args.port, clock=Clock(follow_wall=True)) as emulator:
        print(
            f"Anthropic Messages API emulator on {emulator.base_url} (scenario {args.scenario}); Ctrl-C stops",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
