"""Model architectures behind one registry (`models.create(name, ...)`); filled in by the train stage."""
