"""The gRPC fronts' private directories in the temp dir, and removing the ones dead fronts left.

Here rather than beside the front (deployments/front.py) because ``modelpool stop`` (cluster/runtime.py)
removes them too, and the cluster layer imports nothing above it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import psutil

FRONT_DIRECTORY_PREFIX = "modelpool-front-"
STALE_AFTER_S = 60.0  # a directory this old with no haproxy on it is not one still being started


def remove_stale_front_directories(root: Optional[Path] = None, min_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove front directories that no running haproxy uses, older than ``min_age_s``; the ones removed.

    A front dies with its replica, SIGKILL included, and nothing in a killed process can clean up
    after it: Serve's shutdown and a replica restart both leave the directory behind. So each new front,
    and ``modelpool stop`` once its haproxys are gone, removes what dead fronts left.
    """
    root = Path(root or tempfile.gettempdir())
    in_use: set[str] = set()
    for process in psutil.process_iter(["cmdline"]):
        in_use.update(part for part in process.info.get("cmdline") or () if FRONT_DIRECTORY_PREFIX in part)
    removed = []
    now = time.time()
    for directory in root.glob(f"{FRONT_DIRECTORY_PREFIX}*"):
        try:
            if not directory.is_dir() or now - directory.stat().st_mtime < min_age_s:
                continue
        except OSError:
            continue
        if not any(argument.startswith(f"{directory}{os.sep}") for argument in in_use):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed
