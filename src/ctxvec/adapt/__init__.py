"""Label-free training signal mined from the corpus itself.

No labels, no query generator, no cross-encoder: only the documents, BM25 and the starting
encoder. Each signal is one module with the paper it follows; ``mine.run_mine`` runs them over a
snapshot and writes the ``mined/<key>/`` folder that training (``data.source: mined``) and the
label-free evaluation (``evaluate.pseudo``) read.

- ``title_text``: title <-> text;
- ``ict``: a sentence <-> the rest of its context (inverse cloze task, Lee et al. 2019);
- ``crops``: two independent random crops (Contriever, Izacard et al. 2021);
- ``neighbours``: adjacent passages of one document (DeCLUTR, Giorgi et al. 2021);
- ``pseudo_queries``: a sentence or the top BM25-weighted keywords, kept when a retriever finds
  their document again (round-trip filtering, Promptagator, Dai et al. 2022);
- ``negatives``: hard negatives from BM25 and the encoder, false negatives dropped by a margin
  (sentence-transformers' ``mine_hard_negatives``; NV-Retriever, Moreira et al. 2024).
"""

from ctxvec.adapt.mine import run_mine

__all__ = ["run_mine"]
