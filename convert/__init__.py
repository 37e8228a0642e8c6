"""convert package (installed as flax_effnet.convert)."""
