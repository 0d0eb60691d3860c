"""Serving-side library behind the python-backend models.

Each ``model.py`` in ``model_repository/models`` is a thin adapter over these
modules; the tests exercise them without a server. Rendering copies this package
(and ``kernels``) into each python model's version folder, so a rendered repository
is self-contained. Modules here import only each other (relatively), ``kernels``,
numpy, tokenizers and onnxruntime.
"""


class InvalidInput(ValueError):
    """A request is malformed; the message names the field, the limit and the value."""


class Overloaded(RuntimeError):
    """Admission refused the request: the message names its predicted wait, what it was judged with, and the budget."""
