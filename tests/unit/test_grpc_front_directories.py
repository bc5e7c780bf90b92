"""The gRPC front's private directories do not pile up in the temp dir: dead fronts' ones are removed."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from modelpool.cluster.front_directories import FRONT_DIRECTORY_PREFIX, remove_stale_front_directories


def _front_directory(root: Path, name: str, age_s: float) -> Path:
    directory = root / f"{FRONT_DIRECTORY_PREFIX}{name}"
    directory.mkdir()
    (directory / "haproxy.cfg").write_text("global\n")
    then = time.time() - age_s
    os.utime(directory, (then, then))
    return directory


def test_a_dead_fronts_directory_is_removed_and_a_live_or_new_one_kept(tmp_path: Path) -> None:
    dead = _front_directory(tmp_path, "dead", age_s=600)
    starting = _front_directory(tmp_path, "starting", age_s=1)
    live = _front_directory(tmp_path, "live", age_s=600)
    other = tmp_path / "someone-elses"
    other.mkdir()
    os.utime(other, (time.time() - 600, time.time() - 600))
    # a process holding the live directory's config on its command line, as the front's haproxy does
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(live / "haproxy.cfg")])
    try:
        removed = remove_stale_front_directories(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert removed == [dead]
    assert not dead.exists() and starting.exists() and live.exists() and other.exists()


def test_after_stop_every_front_directory_goes(tmp_path: Path) -> None:
    fresh = _front_directory(tmp_path, "fresh", age_s=0)
    assert remove_stale_front_directories(tmp_path, min_age_s=0) == [fresh]
    assert list(tmp_path.iterdir()) == []
