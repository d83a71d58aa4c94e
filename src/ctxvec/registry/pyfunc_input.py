"""The texts in whatever the registered pyfunc's ``predict`` is handed.

MLflow hands a pyfunc's ``predict`` different shapes for the same texts, depending on how they
were sent. The model is logged without an input schema (see ``register._SIGNATURE``), so MLflow
passes them on unchanged:

- ``mlflow models serve``, JSON ``{"inputs": [...]}`` or ``{"instances": [...]}``: a numpy array
  of strings; ``{"inputs": {"text": [...]}}``: a dict of one array;
- ``{"dataframe_records": [{"text": ...}, ...]}``, ``{"dataframe_split": {"columns": ["text"],
  "data": ...}}``, CSV and Parquet bodies: a pandas DataFrame;
- Python callers of ``mlflow.pyfunc.load_model(...).predict``: a list of strings, a Series, a
  DataFrame, a numpy array, a dict of one list, or one string.

``texts_of`` turns each into a list of strings; anything else is a ``PyfuncInputError`` that says
what was expected. A DataFrame's texts are its column ``text``, or its only column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ctxvec.errors import UserInputError

TEXT_COLUMN = "text"


class PyfuncInputError(UserInputError):
    """Input the encoder pyfunc cannot read texts from."""


def _strings(values: Any, where: str) -> list[str]:
    """Every value of a one-dimensional sequence, checked to be a string."""
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise PyfuncInputError(f"{where}: row {i} is {type(v).__name__} {v!r}, not text")
        out.append(str(v))  # np.str_ -> str
    return out


def _column(columns: list[Any], where: str) -> Any:
    """The column that holds the texts: ``text``, or the only one."""
    if TEXT_COLUMN in columns:
        return TEXT_COLUMN
    if len(columns) == 1:
        return columns[0]
    raise PyfuncInputError(f"{where} has columns {columns}: give the texts in a column named "
                           f"{TEXT_COLUMN!r}, or a single column")


def texts_of(model_input: Any) -> list[str]:
    """The texts of any input shape MLflow hands ``predict`` (module docstring), in order."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        column = _column(list(model_input.columns), "the DataFrame")
        return _strings(model_input[column].tolist(), f"column {column!r}")
    if isinstance(model_input, pd.Series):
        return _strings(model_input.tolist(), "the Series")
    if isinstance(model_input, Mapping):
        key = _column(list(model_input.keys()), "the input dict")
        return texts_of(model_input[key])
    if isinstance(model_input, np.ndarray):
        if model_input.ndim == 2 and model_input.shape[1] == 1:
            model_input = model_input[:, 0]
        if model_input.ndim > 1:
            raise PyfuncInputError(f"an array of shape {model_input.shape}: give one text per "
                                   "row (shape (N,) or (N, 1))")
        return _strings(np.atleast_1d(model_input).tolist(), "the array")
    if isinstance(model_input, list | tuple):
        if model_input and all(isinstance(r, Mapping) for r in model_input):  # records
            return texts_of(pd.DataFrame(list(model_input)))
        return _strings(model_input, "the list")
    raise PyfuncInputError(f"cannot read texts from {type(model_input).__name__}: give a list "
                           "of strings, a DataFrame with a 'text' column, a Series or an array")
