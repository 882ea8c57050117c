"""Programs the start-up benchmark starts: the example's training as `launch`, by hand, in Lightning."""
