"""Training: datasets (``data``), the shared Accelerate loop (``loop``) and one module per
stage (``autoencoder``, ``diffusion``; a ``matcher`` stage plugs into the same loop).

Public API::

    from refsr.train import TrainOptions, run_training, AutoencoderStage, DiffusionStage
    run_training(DiffusionStage("pairs/manifest.jsonl", config="small", kind="ldm-ca",
                                vqvae="runs/vq", matches="matches.jsonl"),
                 TrainOptions(output="runs/ldm", steps=5000, batch_size=8, lr=2e-4))
"""

from .loop import EMA, Stage, TrainOptions, checkpoint_dirs, lr_factor, run_training

__all__ = ["EMA", "Stage", "TrainOptions", "checkpoint_dirs", "lr_factor", "run_training", "AutoencoderStage", "DiffusionStage"]


def __getattr__(name):
    if name == "AutoencoderStage":
        from .autoencoder import AutoencoderStage

        return AutoencoderStage
    if name == "DiffusionStage":
        from .diffusion import DiffusionStage

        return DiffusionStage
    raise AttributeError(name)
