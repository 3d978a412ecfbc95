"""What comes after a run: a logged ensemble on new images (`infer`, `make predict`), a package for a
Kaggle code competition (`export`), and disk space given back (`prune`)."""
