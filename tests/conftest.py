import shutil

import pytest
from tests.helpers import SYNTHETIC_BUNDLE



@pytest.fixture
def bundle_copy(tmp_path):
    """A private copy of the synthetic test bundle, free to damage."""
    target = tmp_path / "bundle"
    shutil.copytree(SYNTHETIC_BUNDLE, target)
    return target
