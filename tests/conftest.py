"""One torch thread in the test process: results are reproducible across machines
(the determinism tests compare exact accuracies) and a 2-core CI machine is not
oversubscribed by the worker processes some tests start.

The proxy-data cache of every test lives in one temporary folder per session
(`EFFNAS_CACHE_DIR`, inherited by the worker processes and subprocesses tests start):
tests never write to the user's real cache, and build each dataset entry once."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def proxy_data_cache(tmp_path_factory):
    """The session's proxy-data cache folder (`nas.evaluate.cache`)."""
    path = tmp_path_factory.mktemp("proxy-data-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EFFNAS_CACHE_DIR", str(path))
        yield path
