"""What comes after a run: a logged ensemble on new images (`infer`, `make predict`), a package for a
Kaggle code competition (`export`) and its entry through a kernel (`code_submit`, what `make submit`
does on a code competition), and disk space given back (`prune`)."""
