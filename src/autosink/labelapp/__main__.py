"""``python -m autosink.labelapp [--host H] [--port P] [--token T]`` (same as `autosink label serve`)."""

from __future__ import annotations

import argparse
import sys

from autosink.labelapp.server import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV, serve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autosink.labelapp", description="Serve the labeling app.")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--token", default=None, help=f"access token (default ${TOKEN_ENV}); required off loopback")
    args = p.parse_args(argv)
    try:
        return serve(args.host, args.port, args.token)
    except (ValueError, FileNotFoundError) as e:
        print(f"autosink label serve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
