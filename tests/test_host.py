"""keep_freed_memory stops XLA:CPU from page-faulting its buffers in again on every execution."""

import subprocess
import sys
import textwrap

# Runs a jitted function with a 256 MB temporary (an outer product it must materialise to read
# transposed) and prints the page faults of later calls per page of that temporary.
SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from flax_effnet.host import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    import jax, jax.numpy as jnp
    f = jax.jit(lambda a: jnp.sum((a @ a.T) * (a @ a.T).T))
    x = jnp.ones((8_000, 8), jnp.float32)
    temp_bytes = 8_000 * 8_000 * 4
    for _ in range(3):
        jax.block_until_ready(f(x))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        jax.block_until_ready(f(x))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(faults / 4 / (temp_bytes / 4096))
    """
)


def _faults_per_output_page(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        env={"JAX_PLATFORMS": "cpu", "PATH": ""},
    )
    return float(out.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_reuses_buffers_instead_of_faulting_them_in():
    default = _faults_per_output_page("default")
    kept = _faults_per_output_page("keep")
    # Default glibc: every call maps its temporary afresh, so about one fault per page.
    assert default > 0.5, default
    assert kept < 0.05, kept
