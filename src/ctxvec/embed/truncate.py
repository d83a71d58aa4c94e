"""Matryoshka-style truncation (``embed.dim``): keep a vector's first components, re-normalise.

The corpus (``embed_shard``) and every query (``ctxvec.serve.search.Searcher``) go through the
same function, so a query lands where the corpus vectors are. The embeddings and index manifests
record the truncated ``dim`` beside the encoder's own (``model_dim``); a search whose recipe asks
for another dimension than the index holds is refused (``check_dim``), never answered with
vectors of mismatched meaning.

A model trained with a Matryoshka loss packs most of its meaning into the first components; one
that was not (all-MiniLM-L6-v2) loses recall quickly as components go: docs/benchmarks.md
(Compact vectors) measures how much.
"""

from __future__ import annotations

import numpy as np

from ctxvec.errors import UserInputError


class DimensionMismatchError(UserInputError):
    """The recipe's ``embed.dim`` and what an index was built with disagree."""


def truncate(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """(N, D) -> (N, dim) float32, each row L2-normalised again; ``dim`` None or >= D: the
    vectors unchanged (float32). A zero row stays zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if dim is None or dim >= vectors.shape[-1]:
        return vectors
    if dim < 1:
        raise UserInputError(f"embed.dim must be at least 1, got {dim}")
    cut = np.ascontiguousarray(vectors[..., :dim])
    norms = np.linalg.norm(cut, axis=-1, keepdims=True)
    return cut / np.where(norms > 0, norms, 1.0)


def stored_dim(model_dim: int, dim: int | None) -> int:
    """The dimension vectors are stored at: ``embed.dim``, capped at the encoder's own."""
    return model_dim if dim is None else min(dim, model_dim)


def check_dim(wanted: int | None, recorded: int, model_dim: int, what: str) -> None:
    """Refuse when a recipe's ``embed.dim`` (None: the encoder's full ``model_dim``) is not the
    dimension ``what`` (an index, an embeddings folder) was built with."""
    if stored_dim(model_dim, wanted) != recorded:
        full = stored_dim(model_dim, wanted) == model_dim
        asked = f"embed.dim={wanted}" if wanted is not None else "embed.dim unset"
        asked += f" (the encoder's full {model_dim})" if full else ""
        raise DimensionMismatchError(
            f"{what} holds {recorded}-dimensional vectors, but the recipe asks for {asked}: "
            f"set embed.dim: {recorded} (or rebuild it with this recipe)")


def query_dim(recorded: int, model_dim: int, wanted: int | None, what: str) -> int | None:
    """The dimension queries are cut to for an index holding ``recorded``-dimensional vectors of
    a ``model_dim`` encoder (None: not cut). A recipe's explicit ``embed.dim`` (``wanted``) must
    agree; None follows the index, as the query precision does."""
    if recorded > model_dim:
        raise DimensionMismatchError(f"{what} holds {recorded}-dimensional vectors, more than "
                                     f"the encoder's {model_dim}: it was built by another model")
    if wanted is not None:
        check_dim(wanted, recorded, model_dim, what)
    return recorded if recorded < model_dim else None
