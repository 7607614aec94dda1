"""Training: the loop, the schedule, the run folder's checks and Grokfast gradient filters (the float64
loss is the models', in models/loss.py)."""
