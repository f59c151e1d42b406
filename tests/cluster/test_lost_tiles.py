"""Tiles lost between fetch and compose (their owner or node died) are a retry, then a 503:
never a picture with holes. The end-to-end case is test_multinode's node loss."""

from __future__ import annotations

import pickle
import shutil
import tempfile

from ray.exceptions import RayTaskError

from deployments.contracts import TilesLost
from deployments.errors import api_error_of, is_replica_death


def _as_from_a_replica(exc: BaseException) -> BaseException:
    """``exc`` as the ingress sees it: pickled across processes inside Ray's task error."""
    try:
        raise exc
    except BaseException as raised:
        wrapped = RayTaskError("Compose.render", "traceback", raised)
    return pickle.loads(pickle.dumps(wrapped))


def test_lost_tiles_are_worth_one_retry_and_then_a_503():
    wrapped = _as_from_a_replica(TilesLost("3 tiles lost from the object store (OwnerDiedError)"))
    assert is_replica_death(wrapped)
    error = api_error_of(wrapped)
    assert error.status == 503 and error.error == "service unavailable"
    assert "tiles lost" in str(error.detail)


def test_other_failures_are_not_mistaken_for_lost_tiles():
    assert not is_replica_death(_as_from_a_replica(ValueError("bad spec")))


def test_compose_raises_when_a_tile_reference_cannot_be_read():
    """A real reference whose value is gone with the actor that was to produce it (as tiles are
    gone with the node that held them): compose raises TilesLost instead of drawing around it."""
    import numpy as np
    import pytest
    import ray

    from deployments.compose_stage import Compose
    from deployments.config import AppConfig

    @ray.remote(num_cpus=0)
    class Owner:
        def put(self):
            # a 1 MiB tile: held in the object store (small objects would travel inline)
            return ray.put(np.full((512, 512), 1, dtype=np.float32))

    temp_dir = tempfile.mkdtemp(prefix="skr-lt-", dir="/tmp")  # short: Ray's socket paths
    try:
        ray.init(num_cpus=1, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
        owner = Owner.remote()
        alive = ray.get(owner.put.remote())
        config = AppConfig(render={"backend": "numpy"}, upstream={"request_deadline_s": 5.0})
        compose = Compose.func_or_class(config.model_dump())
        assert compose._resolve({7: alive})[7][0, 0] == 1  # readable while its owner lives
        ray.kill(owner, no_restart=True)
        lost = owner.put.remote()  # the actor is gone: this value will never exist
        with pytest.raises(TilesLost, match="1 tiles lost"):
            compose._resolve({8: lost, 9: np.zeros((4, 4), dtype=np.float32)})
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
