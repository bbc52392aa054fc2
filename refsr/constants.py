"""Choice lists and defaults that the library and the CLI share.

No imports: `refsr train --help` reads its choices from here without importing torch or
diffusers, and the library modules that check these values import them from here too, so
each list has one definition.
"""

#: model kinds (``refsr.models.ldm``): the LDM-SR baseline, and with the reference branch
KINDS = ("ldm", "ldm-ca")
#: what the U-Net predicts (``refsr.models.ldm``; the scheduler config records it)
PREDICTION_TYPES = ("epsilon", "v_prediction")
#: learning-rate schedules after warmup (``refsr.train.loop``)
LR_SCHEDULES = ("cosine", "constant")
#: mixed precision of the training loop (``refsr.train.loop``)
MIXED_PRECISION = ("no", "bf16", "fp16")
#: what the autoencoder's decoder is trained on (``refsr.train.autoencoder``)
DECODE_MODES = ("quantized", "continuous")
#: dtypes of exported matcher weights (``refsr.models.matcher``)
EXPORT_DTYPES = ("float16", "float32")

#: loop options of the matcher stage when the command line leaves them unset (the
#: autoencoder and diffusion stages take theirs from the model config's ``train`` section)
MATCHER_TRAIN_DEFAULTS = {"batch_size": 32, "lr": 3e-4, "grad_clip": 1.0, "ema_decay": 0.99, "warmup_steps": 50,
                          "lr_schedule": "cosine", "validate_every": 500}
