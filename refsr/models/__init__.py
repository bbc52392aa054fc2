"""Models: every network. The VQ autoencoder, the denoising U-Net and the reference branch
(``ldm-ca``); the patch matcher of reference retrieval (``matcher``).

Public API: :class:`RefSRModel` (``from_config``, ``from_pretrained``, ``save_pretrained``, ``pipeline``,
``encode``, ``decode``, ``encode_lr``, ``encode_references``, ``forward``),
:func:`load_config`, :func:`list_configs`, :class:`LRContext`, :class:`RefContext`,
:class:`RefSRPipeline` (the model folder as a diffusers pipeline),
:class:`MatcherNet`, :func:`load_matcher`.
Heavy imports (torch, diffusers) happen when this package is imported, so CLI modules
import it inside their functions.
"""

from .ldm import KINDS, MODEL_FORMAT, SCHEDULER_CONFIG, RefSRModel, list_configs, load_config, unet_forward
from .matcher import MatcherNet, load_matcher
from .pipeline import RefSRPipeline
from .ref_branch import AGGREGATIONS, LRContext, RefBranch, RefContext

__all__ = [
    "AGGREGATIONS",
    "KINDS",
    "LRContext",
    "MatcherNet",
    "MODEL_FORMAT",
    "RefBranch",
    "RefContext",
    "RefSRModel",
    "RefSRPipeline",
    "SCHEDULER_CONFIG",
    "list_configs",
    "load_config",
    "load_matcher",
    "unet_forward",
]
