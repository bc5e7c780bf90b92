"""Where modelpool keeps its files on a machine: the home folder and what lives in it, spelled once.

The server (``modelpool.cluster.settings``), the CLI and the client all find the cluster's state and the
management token here, so a client on the cluster's machine needs no configuration: it looks
where ``modelpool start`` wrote. Only the standard library, so the client can import it cheaply.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

#: The environment variable naming the home folder (the ``--home`` setting's variable).
HOME_ENV = "MODELPOOL_HOME"
DEFAULT_HOME = "~/.modelpool"
TOKEN_FILE = "management_token"  # the generated management token, mode 0600
STATE_FILE = "cluster.json"  # what `modelpool start` started: the Ray address, whether it started it, the URL


def home_dir(environ: Optional[Mapping[str, str]] = None) -> Path:
    """$MODELPOOL_HOME, else ~/.modelpool; an empty variable counts as unset, as for every setting."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def token_path(home: Optional[Path] = None) -> Path:
    """The management token file ``modelpool start`` writes when no token is configured."""
    return (home_dir() if home is None else Path(home)) / TOKEN_FILE


def state_path(home: Path) -> Path:
    """The cluster state file ``modelpool start`` writes and ``stop``, ``status`` and remote commands read."""
    return Path(home) / STATE_FILE


def model_store_dir(home: Path) -> Path:
    """The default model store: archives registered at start."""
    return Path(home) / "model_store"


def objects_dir(home: Path) -> Path:
    """The default object store: the registry, model copies and batch results."""
    return Path(home) / "objects"


def cache_dir(home: Path) -> Path:
    """Unpacked archives and downloads."""
    return Path(home) / "cache"


def bin_dir(home: Path) -> Path:
    """Programs ``start`` writes for Ray to run (the HAProxy wrapper that keeps its stats on loopback)."""
    return Path(home) / "bin"
