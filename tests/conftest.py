import shutil

import pytest

from edge import DEFAULT_BUNDLE


@pytest.fixture
def bundle_copy(tmp_path):
    """A private copy of the shipped default bundle, free to damage."""
    target = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, target)
    return target
