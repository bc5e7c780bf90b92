"""What a test needs to call a running cluster's management API: the token ``modelpool start`` wrote."""
from __future__ import annotations

from pathlib import Path


class ManagementAccess:
    """Mixed into the test clusters' dataclasses, which have a ``home`` (the cluster's MODELPOOL_HOME)."""

    home: Path

    @property
    def token(self) -> str:
        return (self.home / "management_token").read_text().strip()

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}
