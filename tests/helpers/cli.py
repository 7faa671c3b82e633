"""The `bnserve` command line as a user runs it: a subprocess, and the one-line error it must give."""

import subprocess
import sys


def bnserve(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "bnserve.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
