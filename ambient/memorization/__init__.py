"""Memorization: image embedders, nearest-neighbour search, copy verdicts, metrics and the judging classifier."""
