"""Browser tests open the HTML report in Debian's headless Chromium (no Python packages:
tests/browser/chromium.py). They never skip: without chromium they fail and say that
scripts/setup.sh installs it. Deselect them with -m 'not browser'."""

import pytest

from tests.browser.chromium import MISSING, chromium_path


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def chromium():
    """The chromium binary; the test fails (not skips) when it is not installed."""
    path = chromium_path()
    if path is None:
        pytest.fail(MISSING, pytrace=False)
    return path
