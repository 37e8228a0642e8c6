"""train package (installed as flax_effnet.train)."""
