"""The MLflow pyfunc that every registered encoder is logged as (MLflow "models from code").

MLflow stores this file next to the model's artifacts and runs it to load the model, so nothing is
pickled: the weights are the safetensors folder logged under the ``encoder`` artifact.
``mlflow.pyfunc.load_model("models:/ctxvec-encoder@champion").predict(["some text"])`` returns one
L2-normalised vector per input text.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

from ctxvec.model.encoder import Encoder


class CtxvecEncoderModel(PythonModel):
    def load_context(self, context) -> None:
        self.encoder = Encoder.load(context.artifacts["encoder"], device="auto", precision="auto")

    def predict(self, context, model_input: list[str], params=None) -> list[list[float]]:
        return self.encoder.encode(list(model_input)).tolist()


mlflow.models.set_model(CtxvecEncoderModel())
