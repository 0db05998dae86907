"""The classifier's accuracy gate: the least test accuracy its check accepts by default, and the lowest allowed."""

ACCURACY_FLOOR, LOWEST_ACCURACY_FLOOR = 0.95, 0.90
