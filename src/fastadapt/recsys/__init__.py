"""Cold-start recommendation on MovieLens: users as tasks, MeLU, baselines and ``recommend``."""
