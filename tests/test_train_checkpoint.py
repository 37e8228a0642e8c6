"""Checkpointer: state and meta round-trip; a save that crashed half-way (a leftover temporary
directory) is deleted by the next run and never hides the last good checkpoint; a damaged checkpoint is set
aside, never deleted, and the newest intact one is used."""

import jax
import jax.numpy as jnp
import numpy as np

from flax_effnet.train.checkpoint import Checkpointer


def _state(x):
    return {"params": {"w": jnp.full((3,), x)}, "step": jnp.asarray(int(x), jnp.int32), "ema": None}


ABSTRACT = jax.eval_shape(lambda: _state(0.0))


def _saved(tmp_path, steps, keep=3):
    ckpt = Checkpointer(tmp_path / "ckpt", keep=keep)
    for step in steps:
        ckpt.save(step, _state(float(step)), {"class_names": ["a", "b"], "step": step})
    ckpt.close()
    return tmp_path / "ckpt"


def test_roundtrip_and_crash_mid_save(tmp_path):
    directory = _saved(tmp_path, [5])
    # A crash while writing step 9: orbax's temporary directory is left behind, half written.
    partial = directory / "9.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 10)

    ckpt = Checkpointer(directory)
    assert ckpt.latest_step() == 5
    state, meta = ckpt.restore(5, ABSTRACT)
    np.testing.assert_array_equal(state["params"]["w"], np.full(3, 5.0))
    assert state["ema"] is None and meta == {"class_names": ["a", "b"], "step": 5}
    ckpt.save(6, state, meta)  # the resumed run's first save waits for the clean-up
    ckpt.close()
    assert not partial.exists()
    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith("_")) == ["5", "6"]


def test_keeps_last_k(tmp_path):
    assert Checkpointer(_saved(tmp_path, [1, 2, 3], keep=2)).all_steps() == [2, 3]


def _damage(step_dir, how):
    files = sorted(p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 0)
    if how == "truncated":  # e.g. the disk filled up under a copy of the run
        for f in files:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "emptied":
        for f in files:
            f.write_bytes(b"")
    elif how == "meta":
        (step_dir / "meta" / "metadata").write_text("{not json")


def test_damaged_latest_falls_back_to_the_newest_intact_one(tmp_path):
    for how in ("truncated", "emptied", "meta"):
        directory = _saved(tmp_path / how, [2, 4, 6])
        _damage(directory / "6", how)
        _damage(directory / "4", "truncated")
        warnings = []
        ckpt = Checkpointer(directory)
        step, state, meta = ckpt.restore_latest(ABSTRACT, warnings.append)
        assert step == 2 and meta["step"] == 2, how
        np.testing.assert_array_equal(state["params"]["w"], np.full(3, 2.0))
        assert len(warnings) == 2 and "step 6" in warnings[0] and "step 4" in warnings[1], warnings
        # Nothing deleted: the damaged ones are kept beside, the intact one is where it was.
        assert sorted(p.name for p in directory.iterdir() if not p.name.startswith("_")) == [
            "2", "damaged-4", "damaged-6"]
        assert ckpt.all_steps() == [2]
        # Training goes on from step 2 and may save step 4 again.
        ckpt.save(4, _state(4.5), {"step": 4})
        ckpt.close()
        assert Checkpointer(directory).restore(4, ABSTRACT)[1] == {"step": 4}
