"""Read SAEs trained by other libraries into our common ``BaseSAE``, and detect their format.

``detect_format(path)`` names the on-disk format; ``read_sae(path)`` returns an SAE of ours
whose ``encode`` / ``decode`` reproduce the source library's own model loaded from the same
files. Formats (``FORMATS``):

``husai``                ``config.json`` (``"format": "husai.sae"``) + ``sae.safetensors``
                         (``checkpoint.save_sae``)
``saelens``              ``cfg.json`` + ``sae_weights.safetensors`` (``saelens.import_saelens``)
``sparsify``             EleutherAI sparsify (``eai-sparsify``): one folder per hookpoint with
                         ``cfg.json`` + ``sae.safetensors`` (``SparseCoder.save_to_disk``)
``dictionary_learning``  saprmarks/dictionary_learning: ``ae.pt`` (a ``torch.save``'d state
                         dict) + ``config.json`` (``{"trainer": {"dict_class": ...}}``)

A folder holding exactly one checkpoint folder (a sparsify run folder with one hookpoint,
a dictionary_learning ``save_dir`` with one ``trainer_0``) is accepted in its place; with
several, a ``HusaiError`` lists them. A dictionary_learning ``.pt`` file (``ae.pt``,
``checkpoints/ae_<step>.pt``) may be given directly.

Mapping (ours computes ``pre = (x - b_in) W_enc + b_enc`` with ``b_in = b_dec`` for an SAE,
decoder rows ``W_dec`` (d_sae, d_out) of unit norm, ``x_hat = z W_dec + b_dec``):

=====================================  ==========  ===========================================
source class                           ours        notes
=====================================  ==========  ===========================================
sparsify SparseCoder, topk             topk        ``encoder.weight`` is (d_sae, d_in) rows;
                                                   ``W_dec`` (d_sae, d_in) as ours; ``b_dec``
                                                   subtracted before the encoder as ours
sparsify, ``transcode=True``           topk,       no input bias (our ``b_in`` = 0), d_out = d_in
                                       transcoder
dl AutoEncoder                         relu        pre-bias ``bias`` = our ``b_dec``;
                                                   ``decoder.weight`` is (d_in, d_sae): transposed
dl AutoEncoderNew                      relu        no pre-bias: folded into ``b_enc``
dl AutoEncoderTopK                     topk        its default top-k encode (the ``threshold``
                                                   buffer, used only on request, is dropped)
dl BatchTopKSAE                        batchtopk   calibrated threshold = max(threshold, 0)
dl MatryoshkaBatchTopKSAE              batchtopk   (all groups active, as when loaded)
dl JumpReluAutoEncoder                 jumprelu    ae.pt never subtracts ``b_dec`` before the
                                                   encoder (``apply_b_dec_to_input=False``): folded
                                                   into ``b_enc``; threshold <= 0 acts as ReLU and
                                                   becomes a threshold of exactly 0
=====================================  ==========  ===========================================

Both libraries' TopK takes the k largest of ReLU(pre) (ties among zeros give zeros), which is
ours: ReLU(TopK(pre)). dictionary_learning's BatchTopK/Matryoshka inference is
``r * (r > threshold)`` with ``r = ReLU(pre)``: for threshold >= 0 that is our
``pre * (pre > threshold)``; a negative (never calibrated, the default -1) threshold keeps
every positive latent, i.e. our threshold 0.

Decoder norms. Our rows are unit-norm. When the source rows already are (within float32
rounding: ``allclose(norms, 1)``, rtol 1e-5, the test dictionary_learning itself uses;
for a bf16/fp16 checkpoint within that dtype's epsilon) the weights are taken as they are.
Otherwise each row's norm ``n_j`` is folded into the encoder: ``W_enc[:, j] *= n_j``,
``b_enc[j] *= n_j``, threshold ``*= n_j``, ``W_dec[j] /= n_j``. ReLU and JumpReLU commute
with that positive scale, so reconstructions are unchanged and latent ``j`` reads ``n_j``
times the source's (what dictionary_learning's ``AutoEncoder.from_pretrained`` does too).
A BatchTopK SAE with non-unit rows gets one threshold per latent and so is read as
``jumprelu`` (exact). TopK selection compares raw pre-activations, which a per-latent scale
would reorder, so a TopK SAE (sparsify, or dl AutoEncoderTopK) with non-unit rows raises a
``HusaiError`` instead of being approximated; so does a zero decoder row that would need it.
Sparsify transcoders are trained without decoder normalisation, so in practice only those
whose rows happen to be unit-norm can be read.

Not representable, each a one-line ``HusaiError`` naming it: sparsify ``groupmax``
activation, a non-zero sparsify skip connection ``W_skip``, dictionary_learning
``GatedAutoEncoder``; unknown classes too.

Provenance (constant across seeds of one configuration, so seeds still stack) goes in
``cfg.extra``: ``source_format``, ``source_class`` (and ``matryoshka_group_sizes``, or a
``note`` when BatchTopK is read as JumpReLU).

Reading needs only torch and safetensors: neither sparsify nor dictionary_learning is
imported here (the tests use them to check the readers against the real packages).

The package: ``formats`` (detect a format, locate the checkpoint), ``foreign`` (sparsify and
dictionary_learning state dicts to our parameters), ``assemble`` (build our SAE from them) and
``read`` (``read_sae``).
"""

from .formats import FORMATS, detect_format, _locate
from .read import read_sae

__all__ = ["FORMATS", "detect_format", "read_sae"]
