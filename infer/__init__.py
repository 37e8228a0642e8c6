"""infer package (installed as flax_effnet.infer)."""
