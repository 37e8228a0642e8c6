"""Shared test set-up. Kept minimal: nothing here imports torch unless a test asks for it."""

import pytest


def register_torchvision_ops():
    """Let torchvision (and timm, which imports it) import with this CPU torch build; the
    converter's `import_torchvision` registers the two op schemas its import needs."""
    from flax_effnet.convert.verify import import_torchvision

    import_torchvision()


@pytest.fixture(scope="session")
def torchvision_ops():
    """Fixture form of `register_torchvision_ops` for tests that import torchvision or timm."""
    register_torchvision_ops()
