"""One-to-one matching metrics between two SAEs, over all or only alive latents (DESIGN.md §5).

Definitions (one each; "unit rows" = rows divided by their L2 norm, a zero row stays zero and
has cosine 0 with everything; every cosine here is *signed*, except in ``pwmcc``):

- ``pwmcc`` — max-|cos| PWMCC: with ``C = |D̂_a D̂_bᵀ|`` (unit decoder rows),
  ``½(mean_i max_j C_ij + mean_j max_i C_ij)``. Same value as ``consistency.pwmcc``.
- ``pwmcc_signed`` — the same with signed ``C = D̂_a D̂_bᵀ`` (latents are non-negative, so a
  decoder direction's sign means something): in [-1, 1]; a feature's negation is no match.
- ``pw_mcc`` — PW-MCC (Song et al. 2025): optimal one-to-one (Hungarian) matching of the
  latents on cost ``1 - C_ij`` with signed ``C``; value = mean of the matched signed cosines over
  the ``min(d_sae_a, d_sae_b)`` matched pairs.
- ``shared_latent`` — shared-latent fraction (Paulo & Belrose 2025): the same Hungarian matching
  on decoder signed cosine (the paper treats matching on encoder or decoder vectors as a
  hyperparameter and finds both usually give the same pairs; we match on the decoder); a matched
  pair is *shared* when its decoder cosine AND its encoder cosine (unit encoder rows, W_enc
  transposed to (d_sae, d_in), signed) are both strictly greater than ``threshold`` (0.7; the
  authors' "cosine similarity greater than 0.7 according to both the encoder and decoder
  weights", as worded in their Dec 2024 EleutherAI post that became arXiv:2501.16615);
  value = shared pairs / ``min(d_sae_a, d_sae_b)``.
- ``activation_mcc`` — activation matching: Pearson correlation between every latent of A and
  every latent of B over the same rows (a latent constant on these rows, e.g. dead, correlates 0
  with everything), Hungarian matching on cost ``1 - corr``; value = mean matched correlation
  over ``min(d_sae_a, d_sae_b)`` pairs. Correlations are float64 (standardised columns, one
  matmul per block; or, for sparse latents, one sparse x dense product of the raw latents
  centred afterwards), computed in blocks of at most ~64 MiB besides the dense float64 cost
  matrix.

Scopes: ``"all"`` latents, or only ``"alive"`` ones (fired, > 0, on at least one held-out row of
the view; see ``view_of``/``restrict``). A view without alive latents makes the alive-scope
metrics raise ``HusaiError``. Restricting to alive latents equals computing on submatrices
(cosines and correlations are per latent), which ``pair_family`` uses to share one similarity
pass between the two scopes.

The package: ``views`` (an SAE as decoder rows and, optionally, its latents; alive scope),
``correlation`` (latent activations: statistics and correlations, streamed in blocks),
``pairwise`` (the metrics of one pair) and ``family`` (every metric, every scope, every pair).
"""

from .views import SCOPES, ENCODE_BATCH, Matrix, SAEView, view_of, restrict
from .correlation import CORR_BYTES, SPARSE_DENSITY
from .pairwise import pw_mcc, shared_latent_fraction, activation_mcc
from .family import METRICS, pair_family, family_matrices
