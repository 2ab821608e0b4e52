"""Training: optimizer and schedules, train state, the pure jitted train step, checkpoints, the main loop."""
