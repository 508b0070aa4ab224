"""Running a command until it is ready, then signalling it: the stop tests' shared harness."""

import subprocess
import time
from pathlib import Path
from typing import Callable


def signal_when_ready(
    command: list[str],
    log_path: Path,
    ready: Callable[[str], bool],
    stop_signal: int,
    timeout: float = 240,
    **popen_kwargs,
) -> tuple[int, str]:
    """Start ``command`` with its output in ``log_path`` (a file: a pipe left unread could fill and
    block it), wait until ``ready(log text)``, send it ``stop_signal`` and wait for it to exit.
    Returns its exit code and its output; fails if it exits, or is not ready, before ``timeout``."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **popen_kwargs)
        try:
            deadline = time.time() + timeout
            while not ready(log_path.read_text()):
                assert process.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.05)
            process.send_signal(stop_signal)
            code = process.wait(timeout=timeout)
        finally:
            process.kill()
    return code, log_path.read_text()
