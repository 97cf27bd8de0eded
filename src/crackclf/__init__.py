"""crackclf: does a photo of concrete show a crack? A DVC + Keras + MLflow pipeline."""

__version__ = "0.1.0"


class CrackclfError(Exception):
    """An error the user can fix; the CLI prints it as one line and exits with ``exit_code``."""

    exit_code = 1
