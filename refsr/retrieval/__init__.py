"""Reference retrieval: OpenCLIP + hnswlib image index (stage 1), ResNet-34 patch matcher (stage 2).

Heavy dependencies (torch, open_clip, hnswlib, torchvision) are imported inside functions.
"""

from .embed import Embedder, EmbedderIdentity, EmbedderSpec
from .index import RefIndex, build_index, index_info, index_refs, open_index

__all__ = ["Embedder", "EmbedderIdentity", "EmbedderSpec", "RefIndex", "build_index", "index_info",
           "index_refs", "open_index"]
