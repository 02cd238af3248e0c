"""Compare any SAEs (SAELens, sparsify, dictionary_learning, ours) through phase 4's analysis.

``compare_saes(paths, labels=None, activations=None, hook=None, ...)`` returns a JSON-able
dict; ``husai compare PATH...`` runs notebook ``10_compare`` (which calls it) through the
runner, so a comparison gets a run folder, ``results.json`` and ``report.html`` like any phase.

Inputs. A PATH is anything ``sae.read_sae`` reads (a checkpoint folder, a folder holding one,
a dictionary_learning ``.pt`` file) or a SAELens pretrained SAE ``release/sae_id`` (also
written ``saelens:release/sae_id``). A pretrained SAE is loaded with ``SAE.from_pretrained``
*only from the local Hugging Face cache*: ``HF_HUB_OFFLINE=1`` is set for the call, so it
never touches the network, and a miss is one line saying so. Transcoders are refused (their
reconstruction needs target activations).

Groups. Seeds of one configuration form a group. ``labels`` (one per PATH; equal labels =
one group) sets them explicitly. By default PATHs are grouped by their configuration (the
SAE config as read, which includes format, source class, architecture, d_in, d_sae, k and,
for our checkpoints, every training setting); a configuration found in several source
folders (the parent of each PATH's seed folder) is split by folder when every folder then
holds >= 2 seeds, and kept together otherwise (e.g. sparsify's ``run_seed0/layers.3``
layout, where each run folder holds one seed). A group needs >= 2 SAEs and one architecture
and width.

Compatibility. Every SAE must have the same d_in; where checkpoints record where they read
activations, those must agree too: the TransformerLens hook name (SAELens ``hook_name``; our
checkpoints' ``saes/<layout>/<hook>/...`` folder; the activations' hook), the
dictionary_learning site (``lm_name``, ``layer``, ``submodule_name``) among dictionary_learning
checkpoints, and the model name among checkpoints of one format. A mismatch is one
``HusaiError`` line naming both paths.

Analysis per group (as phase 4, ``comparison.compare_conditions``): every metric of
``matching.METRICS`` with a bootstrap-over-seeds CI, seed-level permutation tests, LCB and the
verdict against each null, and the headline against the strongest null.

- ``isotropic`` (always): untrained SAEs of the group's config (``build_sae``; b_dec from the
  training rows when activations are given), seeds disjoint from any seed the checkpoints
  record.
- ``gaussian_matched`` (only with ``activations``): SAEs of the group's config trained with our
  trainer on Gaussian rows with the activations' mean and full covariance (fitted on the
  training share of a seeded split), same null seeds. Foreign checkpoints record only
  architecture, width and k, so the training settings are ``SAEConfig``'s defaults unless
  ``null_params`` overrides them (our checkpoints, and SAELens files we exported, carry their
  own); the config used is reported. Null SAEs are cached under
  ``<artifacts>/compare/gaussian_matched/<activations fingerprint>/<config id>/``.

With ``activations`` (a HUSAI cache folder, which needs ``hook`` unless it holds one hook, or a
foreign folder of ``<dataset>_<hook>.pt`` files) a seeded split gives held-out rows: EV / L0 /
dead fraction of every SAE (trained and null) on held-out rows, activation matching, and the
alive-latent scope. The foreign SAEs were not trained by us, so their "held-out" rows are only
held out from the null SAEs' training; nothing says the foreign SAEs never saw them.
**Without activations** only the weight-based metrics over all latents are computed (PWMCC,
signed PWMCC, PW-MCC, shared-latent fraction: ``/all`` scope) against the isotropic null;
skipped, and listed in ``result["skipped"]``: activation matching, the alive scope (which
latents are alive needs rows), held-out EV/L0/dead, and the gaussian_matched null (it is fitted
to the activations). No Gaussian rows are invented to fill in for missing data.

Several groups are put side by side (``result["across"]``: one row per group with the headline
metric, its CI, the strongest null, LCB, p, a Holm-adjusted p across the groups, the verdict and
held-out EV/L0/dead).

The package: ``loading`` (read a PATH or a pretrained SAELens SAE), ``groups`` (group the inputs
into configurations, check them compatible), ``activations`` (the activations they are
compared on), ``analysis`` (phase 4's analysis per group and across groups) and ``run``
(``husai compare``).
"""

from .loading import PRETRAINED_PREFIX, LoadedSAE, pretrained_spec, load_pretrained, load_input, load_inputs
from .groups import group_inputs, check_compatible
from .activations import Activations, activation_source_kind, peek_activations, load_activations, check_inputs
from .analysis import NULLS, compare_group, split_seed_tag, across_groups, compare_saes
from .run import relative_paths, run_compare

__all__ = [
    "NULLS", "LoadedSAE", "Activations", "pretrained_spec", "load_pretrained", "load_input", "load_inputs",
    "group_inputs", "check_compatible", "activation_source_kind", "peek_activations", "load_activations",
    "check_inputs", "compare_group", "across_groups", "compare_saes", "relative_paths", "run_compare",
]
