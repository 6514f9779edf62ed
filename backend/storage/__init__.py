"""Where jobs, targets and checkpoints live: Redis (shared by every host) and the models/ folder."""
