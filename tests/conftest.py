import sys

import pytest
import torch

from helpers import REPO_ROOT

if str(REPO_ROOT) not in sys.path:  # `benchmarks` is a folder of the repo, not part of the installed package
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope='module')
def one_thread():
    """ Run a module's tests on one torch thread.

    Small models on a shared 2-core machine run faster single-threaded: two OpenMP threads that have to wait for a
    descheduled sibling at every op barrier can be 10x slower.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def unwritable_dir() -> str:
    """ A folder that refuses new files even to root (``/sys``); the test is skipped where it does not. """
    import os
    import tempfile
    try:
        fd, probe = tempfile.mkstemp(dir='/sys')
    except OSError:
        return '/sys'
    os.close(fd)
    os.unlink(probe)
    pytest.skip('/sys is writable here')
