"""The competition pipeline: stages that read validated config and input artifacts and write output artifacts."""
