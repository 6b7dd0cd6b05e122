# Trainer-side fault tests (issue 26): run directory, checkpoints, outputs.
