"""The one error type the model layer raises: the registry stands on its own, like timm, and the
pipeline turns this into its one-line message at its own boundary."""


class ModelError(ValueError):
    """A model that cannot be built as asked: an unknown name, bad arguments, unusable weights."""


class UnknownModel(ModelError):
    pass
