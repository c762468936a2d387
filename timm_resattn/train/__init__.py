""" Training applications: CIFAR-10/100 data (``cifar_data``) and the training loop (``loop``).

The command that drives them is ``timm_resattn.cli.train_cifar``; this package never imports from ``cli``.
"""
from .cifar_data import (
    LAYOUT, NUM_CLASSES, TrainBatches, apply_label_noise, augment_batch, download_cifar, load_cifar, normalize,
    pixel_mean, read_cifar_pickle, stream_seed,
)
from .loop import (
    Schedule, TrainingDiverged, build_checkpoint, data_normalization, evaluate, load_resume_checkpoint, lr_at,
    save_checkpoint_file, train_loop, train_step, write_final_safetensors,
)

__all__ = [
    'LAYOUT', 'NUM_CLASSES', 'TrainBatches', 'apply_label_noise', 'augment_batch', 'download_cifar', 'load_cifar',
    'normalize', 'pixel_mean', 'read_cifar_pickle', 'stream_seed',
    'Schedule', 'TrainingDiverged', 'build_checkpoint', 'data_normalization', 'evaluate', 'load_resume_checkpoint',
    'lr_at', 'save_checkpoint_file', 'train_loop', 'train_step', 'write_final_safetensors',
]
