"""Weights directories: what `save_pretrained` may replace, and that a failed write loses nothing."""

import pytest

import infer_helpers as H
from flax_effnet import load_pretrained, save_pretrained
from flax_effnet import pretrained as pretrained_lib


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved 3-class tiny model: (model, variables)."""
    directory = H.save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "w")
    return load_pretrained(directory)


def _save(directory, tiny, **kw):
    model, variables = tiny
    return save_pretrained(directory, model, variables, H.TINY_PREP, **kw)


def test_existing_directory_needs_overwrite(tiny, tmp_path):
    out = _save(tmp_path / "w", tiny)
    with pytest.raises(FileExistsError, match="overwrite"):
        _save(out, tiny)
    _save(out, tiny, overwrite=True, source={"format": "second"})
    assert pretrained_lib.read_config(out)["source"] == {"format": "second"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary or backup left


@pytest.mark.parametrize("what", ["folder of the user's", "file", "weights dir with extra files"])
def test_overwrite_never_replaces_what_is_not_ours(tiny, tmp_path, what):
    target = tmp_path / "target"
    if what == "file":
        target.write_text("mine")
    elif what == "folder of the user's":
        target.mkdir()
        (target / "photo.jpg").write_text("mine")
    else:
        _save(target, tiny)
        (target / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() if p.is_file() else None for p in [target, *target.glob("*")]}
    with pytest.raises(FileExistsError, match="choose a new output path|not a directory"):
        _save(target, tiny, overwrite=True)
    after = {p.name: p.read_bytes() if p.is_file() else None for p in [target, *target.glob("*")]}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_failed_write_keeps_the_previous_directory(tiny, tmp_path, monkeypatch):
    out = _save(tmp_path / "w", tiny, source={"format": "first"})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pretrained_lib, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        _save(out, tiny, overwrite=True, source={"format": "second"})
    assert pretrained_lib.read_config(out)["source"] == {"format": "first"}
    load_pretrained(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_failed_swap_restores_the_previous_directory(tiny, tmp_path, monkeypatch):
    """If moving the new directory into place fails, the old one is moved back."""
    out = _save(tmp_path / "w", tiny, source={"format": "first"})
    real_replace = pretrained_lib.os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old -> backup succeeded; new -> out fails
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(pretrained_lib.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        _save(out, tiny, overwrite=True, source={"format": "second"})
    monkeypatch.undo()
    assert pretrained_lib.read_config(out)["source"] == {"format": "first"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
