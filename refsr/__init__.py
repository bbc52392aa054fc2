"""refsr: reference-guided image super-resolution with latent diffusion.

The library is organised one concept per module (see ``docs/architecture.md``):
``io`` (images, atomic writes, manifests), ``degrade`` (Real-ESRGAN degradations),
``retrieval`` (OpenCLIP index, patch matcher), ``models`` (VQ autoencoder, U-Net,
reference branch), ``train``, ``sample`` and ``metrics``.
"""

__version__ = "0.1.0"
