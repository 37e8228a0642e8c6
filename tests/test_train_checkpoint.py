"""Checkpointer: state, data-iterator position and meta round-trip; a save that crashed
half-way (a leftover temporary directory) never hides or destroys the last good checkpoint."""

import grain
import jax
import jax.numpy as jnp
import numpy as np

from flax_effnet.train.checkpoint import Checkpointer


def _iterator():
    loader = grain.DataLoader(
        data_source=grain.sources.RangeDataSource(0, 100, 1),
        sampler=grain.samplers.IndexSampler(100, shuffle=True, num_epochs=None, seed=3),
        worker_count=0,
    )
    return iter(loader)


def _state(x):
    return {"params": {"w": jnp.full((3,), x)}, "step": jnp.asarray(int(x), jnp.int32), "ema": None}


def test_roundtrip_and_crash_mid_save(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    it = _iterator()
    seen = [next(it) for _ in range(5)]
    ckpt.save(5, _state(5.0), it, {"class_names": ["a", "b"]})
    expected_next = [next(it) for _ in range(4)]
    ckpt.close()
    # A crash while writing step 9: orbax's temporary directory is left behind, half written.
    partial = tmp_path / "ckpt" / "9.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 10)

    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    assert ckpt.latest_step() == 5
    fresh = _iterator()
    abstract = jax.eval_shape(lambda: _state(0.0))
    state, meta = ckpt.restore(5, abstract, fresh)
    np.testing.assert_array_equal(state["params"]["w"], np.full(3, 5.0))
    assert state["ema"] is None and meta == {"class_names": ["a", "b"]}
    assert [next(fresh) for _ in range(4)] == expected_next  # the data order continues
    assert len(set(seen)) == 5
    ckpt.close()


def test_keeps_last_k(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    it = _iterator()
    for step in (1, 2, 3):
        next(it)
        ckpt.save(step, _state(float(step)), it, {})
    ckpt.close()
    assert Checkpointer(tmp_path / "ckpt", keep=2).all_steps() == [2, 3]
