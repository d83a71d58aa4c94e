"""The MLflow pyfunc that every registered encoder is logged as (MLflow "models from code").

MLflow stores this file next to the model's artifacts and runs it to load the model, so nothing is
pickled: the weights are the safetensors folder logged under the ``encoder`` artifact, and ctxvec
itself is the wheel logged beside it (``register.py``). ``predict`` takes the texts in any shape
MLflow hands it (``pyfunc_input.py``: a list, an array, a Series, a DataFrame, a dict; so every
JSON format of ``mlflow models serve`` works) and returns one L2-normalised vector per text.

The encoder runs in the precision the version's corpus is embedded in (``model_config`` key
``embed_precision``, recorded at register), so that its vectors match the index's exactly
(``ctxvec.embed.precision``). ``model_config={"precision": ...}`` at load may ask for ``auto`` or
that same precision; the other one is refused.
"""

from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from ctxvec.embed.precision import PYFUNC_PRECISION, follow_recorded, recorded
from ctxvec.model.encoder import Encoder
from ctxvec.registry.pyfunc_input import PyfuncInputError, texts_of


class CtxvecEncoderModel(PythonModel):
    def load_context(self, context) -> None:
        config = context.model_config or {}
        precision = follow_recorded(str(config.get("precision", "auto")),
                                    recorded(config.get(PYFUNC_PRECISION)), "this model version")
        self.encoder = Encoder.load(context.artifacts["encoder"], device="auto",
                                    precision=precision)

    # No type hint on ``model_input``, on purpose: MLflow would turn one into an input schema
    # that admits only {"inputs": [...]}. Without one it warns at every load ("Add type hints
    # to the `predict` method"), under a filter of its own that a caller's filters cannot reach.
    def predict(self, context, model_input, params=None) -> list[list[float]]:
        try:
            texts = texts_of(model_input)
        except PyfuncInputError as e:  # a 400 from the scoring server, with the reason
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        return self.encoder.encode(texts).tolist() if texts else []


mlflow.models.set_model(CtxvecEncoderModel())
