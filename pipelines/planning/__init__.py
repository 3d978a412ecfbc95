"""Planning a time-budget run: measure each candidate on this machine (`probe`), decide which runs,
epochs, folds, precisions and TTA views fit the budget (`plan`), and the plan of record that a replay
and the deadline guard read."""
