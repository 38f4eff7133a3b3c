import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("STYLEFORGE_CACHE", tempfile.mkdtemp(prefix="styleforge-test-cache-"))  # never the user's cache
torch.set_num_threads(1)  # tiny models gain nothing from more threads, and CI has 2 cores


@pytest.fixture(scope="session")
def sd1_components():
    from styleforge.testing import tiny_components

    return tiny_components("sd1")


@pytest.fixture(scope="session")
def sdxl_components():
    from styleforge.testing import tiny_components

    return tiny_components("sdxl")


@pytest.fixture(scope="session")
def tiny_sd1_folder(tmp_path_factory):
    from styleforge.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_sd1"), "sd1")


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory):
    from styleforge.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_sdxl"), "sdxl")


@pytest.fixture
def scheduler():
    from styleforge.testing import sd_scheduler

    return sd_scheduler()
