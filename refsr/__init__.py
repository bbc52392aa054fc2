"""refsr: reference-guided image super-resolution with latent diffusion.

The library is organised one concept per module (see ``docs/architecture.md``):
``io`` (images, atomic writes, manifests), ``degrade`` (Real-ESRGAN degradations),
``retrieval`` (OpenCLIP index, window scoring, the match stage), ``models`` (every network:
VQ autoencoder, U-Net, reference branch, patch matcher), ``train``, ``sample`` and ``metrics``.
"""

__version__ = "0.1.0"
