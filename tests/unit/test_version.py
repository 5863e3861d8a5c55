"""The version tinymqd reports is the Debian package's: tinymqd.__version__ is the version
on debian/changelog's first line, so `tinymqd --version` and the .deb never disagree."""

import re

import tinymqd
from tests.support.daemon import REPO


def test_version_is_the_debian_changelog_version():
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    m = re.match(r"tinymq \(([^()\s]+)\) ", first)
    assert m, f"debian/changelog does not start with 'tinymq (VERSION) ...': {first!r}"
    assert tinymqd.__version__ == m.group(1)
