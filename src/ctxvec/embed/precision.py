"""One precision rule: a query vector runs in the precision its index's vectors were embedded in.

bf16 and fp32 vectors of the same text differ slightly (cosine about 0.9999), so a query embedded
in one precision and searched against vectors embedded in the other scores its own document a
little below 1 and can reorder near ties. ``precision: auto`` picks bf16 on a GPU or a CPU with
bf16 units and fp32 elsewhere, so two commands on one machine could still disagree if each decided
for itself. Hence: the precision is decided once, when the vectors are made (the embeddings and
index manifests record it as ``precision``; a registered version records the one it is embedded
with as the tag ``embed.precision`` and in its pyfunc's ``model_config``), and everything that
embeds queries for those vectors (``Searcher``, the sense searcher, ``ctxvec encode`` with a
registry version, the pyfunc) takes it from there. ``follow_recorded`` is the check: ``auto``
becomes the recorded precision, and an explicit request for the other one is an error.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from ctxvec.errors import UserInputError

if TYPE_CHECKING:
    from ctxvec.config import CtxvecConfig

log = logging.getLogger(__name__)

Resolved = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
# the version tag holding the precision a version is embedded in
PRECISION_TAG = "embed.precision"
# the same, as the key of its pyfunc's model_config (MLflow logs a model_config as run
# parameters, and the run's own parameters hold the recipe's embed.precision already)
PYFUNC_PRECISION = "embed_precision"


class PrecisionMismatchError(UserInputError):
    """Vectors for an index asked for in another precision than the one it was embedded in."""


def embed_precision(cfg: CtxvecConfig) -> Resolved:
    """What ``embed.precision`` resolves to where the local engine embeds (its first device):
    the precision ``run_embed`` will record for a corpus embedded with ``cfg`` on this machine."""
    # lazy: torch; the registry imports this module and must stay light to import
    import torch

    from ctxvec.embed.shards import embed_devices
    from ctxvec.model.encoder import resolve_precision

    return resolve_precision(cfg.embed.precision, torch.device(embed_devices(cfg)[0]))


def recorded(value: object) -> Resolved | None:
    """A recorded precision (a manifest field or a tag), or None when there is none."""
    if value in (None, ""):
        return None
    if value not in PRECISIONS:
        raise ValueError(f"recorded precision {value!r} is neither fp32 nor bf16")
    return value  # type: ignore[return-value]


def follow_recorded(requested: str, recorded_as: str | None, what: str) -> str:
    """The precision to embed with for vectors that ``what`` holds, recorded as ``recorded_as``:
    ``auto`` (or the same value) -> the recorded one; the other one -> ``PrecisionMismatchError``.
    With nothing recorded (vectors made before precisions were recorded) the request stands, with
    a warning, since nothing can be checked."""
    if recorded_as is None:
        log.warning("%s does not record the precision its vectors were embedded in: using %s, "
                    "unchecked", what, requested)
        return requested
    if requested not in ("auto", recorded_as):
        raise PrecisionMismatchError(
            f"{what} was embedded in {recorded_as}; vectors in {requested} would not match its "
            f"vectors exactly: use precision {recorded_as} (or auto, which follows it)")
    return recorded_as
