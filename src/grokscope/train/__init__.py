"""Training: the loop, the float64 loss, the schedule and Grokfast gradient filters."""
