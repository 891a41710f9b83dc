"""One of conftest's LONG_BUILDS in a process of its own: ``python tests/long_build.py SHARED_FOLDER NAME``.

It takes the build's lock before importing anything heavy, so the workers that need the result wait for it
rather than build it a second time; if it fails, the first worker to take the lock builds it and fails with
the error in its test report (this process's output is in SHARED_FOLDER/NAME.log).
"""

from __future__ import annotations

import sys
from pathlib import Path

from filelock import FileLock


def build_lock(shared: Path, name: str) -> FileLock:
    """The lock every process holds while it builds or loads the shared build ``name``."""
    return FileLock(str(shared / f"{name}.lock"))


def main(shared: Path, name: str) -> None:
    with build_lock(shared, name):
        import conftest  # PyTorch and rtool: seconds, spent holding the lock

        builds = dict(conftest.LONG_BUILDS.values())
        builds[name](shared)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
