"""Container healthcheck without curl in the image:
``python3 -m standin.healthcheck http://127.0.0.1:8080/healthz`` or
``python3 -m standin.healthcheck --file /tmp/worker-heartbeat --max-age 30``.
Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path


def main(argv: list[str]) -> int:
    if argv[:1] == ["--file"]:
        max_age = float(argv[3]) if argv[2:3] == ["--max-age"] else 30.0
        try:
            return 0 if time.time() - Path(argv[1]).stat().st_mtime < max_age else 1
        except OSError:
            return 1
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(argv[0], timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
