"""The training loops (RL and SFT) and their parts: experience, metrics, checkpoints."""
