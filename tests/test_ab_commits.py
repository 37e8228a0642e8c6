"""benchmarks/ab_commits.py compiles the model from a git revision's flax_effnet and from the
working tree's in one process: that it exports the revision's files, refuses a bad revision by
name, and that the package it then imports is the exported one, not the installed one."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
_spec = importlib.util.spec_from_file_location(
    "ab_commits", os.path.join(BENCHMARKS, "ab_commits.py")
)
ab_commits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ab_commits)


def _git(*args) -> str:
    return subprocess.run(["git", "-C", ab_commits.REPO, *args], capture_output=True, text=True,
                          check=True).stdout


def test_export_package_writes_the_revisions_files(tmp_path):
    ab_commits.export_package("HEAD", str(tmp_path))
    exported = (tmp_path / "flax_effnet" / "layers.py").read_text()
    assert exported == _git("show", "HEAD:flax_effnet/layers.py")
    assert not (tmp_path / "tests").exists()  # flax_effnet/ only


def test_export_package_names_a_bad_revision(tmp_path):
    with pytest.raises(ValueError, match="no-such-revision"):
        ab_commits.export_package("no-such-revision", str(tmp_path))


def test_package_from_imports_the_exported_tree_then_drops_it(tmp_path):
    # In a child process: dropping flax_effnet from sys.modules here would leave this test
    # process's other modules holding classes of a package that is no longer imported.
    ab_commits.export_package("HEAD", str(tmp_path))
    marker = "EXPORTED_COPY = True\n"
    with open(tmp_path / "flax_effnet" / "__init__.py", "a") as f:
        f.write(marker)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {BENCHMARKS!r})
        import ab_commits
        with ab_commits.package_from({str(tmp_path)!r}) as fe:
            print(fe.__file__, getattr(fe, "EXPORTED_COPY", False))
        print(any(m == "flax_effnet" or m.startswith("flax_effnet.") for m in sys.modules))
        with ab_commits.package_from(ab_commits.REPO) as fe:
            print(fe.__file__, getattr(fe, "EXPORTED_COPY", False))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert out.returncode == 0, out.stderr
    exported, dropped, working = out.stdout.split("\n")[:3]
    assert exported == f"{tmp_path / 'flax_effnet' / '__init__.py'} True"
    assert dropped == "False"
    assert working == f"{os.path.join(ab_commits.REPO, 'flax_effnet', '__init__.py')} False"
