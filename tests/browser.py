"""A real headless browser for the status page's tests: Debian's chromium (/usr/bin/chromium) driven by playwright.

Import the fixtures into a test module (``from tests.browser import browser_fixture, page_fixture``).
``tests/ensure_system_packages.sh`` installs chromium (``make test`` runs it); playwright's own browser downloads
are never used. One browser per test module (``browser``), a fresh context per test (``page``: its own cookies),
everything closed at teardown, and a check that no chromium process outlived the module.

``page`` answers JavaScript dialogs (the page's ``confirm()`` before every action) as ``page.dialogs`` says:
accepted unless a test sets ``page.dialogs.accept = False``; every message asked is kept in
``page.dialogs.asked``. An uncaught error in the page's script fails the test.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator

import psutil
import pytest

CHROMIUM = "/usr/bin/chromium"
#: Headless on a machine without a GPU or a sandbox-capable kernel setup (containers, CI), and quiet on the
#: network: without the background-networking flags chromium dials out at start, which a closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
#: What playwright's auto-waiting assertions allow by default in these tests (a real cluster may take a while).
TIMEOUT_MS = 30_000


@dataclass
class Dialogs:
    """How the next ``confirm()`` is answered, and every message the page asked."""

    accept: bool = True
    asked: list[str] = field(default_factory=list)

    def answer(self, dialog) -> None:
        self.asked.append(dialog.message)
        if self.accept:
            dialog.accept()
        else:
            dialog.dismiss()


def _chromium_processes() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "chrom" in child.name().lower():
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator:
    """Headless chromium for one test module; closed (and checked gone) at its end."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `bash tests/ensure_system_packages.sh` (Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()
    left = kill_leftover_chromium()
    assert not left, f"chromium processes outlived the browser: {left}"


def kill_leftover_chromium() -> list[int]:
    """Kill chromium processes that outlived their browser; their PIDs (none: the browser closed cleanly)."""
    left = _chromium_processes()
    for process in left:
        process.kill()
    return [process.pid for process in left]


@pytest.fixture(name="page")
def page_fixture(browser) -> Iterator:
    """A page in a fresh browser context (no cookies), its dialogs answered by ``page.dialogs``."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    opened.dialogs = Dialogs()
    opened.on("dialog", opened.dialogs.answer)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
        assert not errors, f"the page's script failed: {errors}"
    finally:
        context.close()
