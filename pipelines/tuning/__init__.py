"""Optuna studies: where they are stored and how they are named (`studies`), the objective and
`make tune` (`tune`), and the study a time-budget plan schedules."""
