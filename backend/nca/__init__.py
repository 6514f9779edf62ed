"""The Growing NCA core: pure PyTorch, no web or queue imports (the services depend on it)."""

from .jobspec import JobSpec, SpecError
from .model import CHANNELS, FIRE_RATE, HIDDEN, NCA, alive_mask, erase_circle, make_seed, to_rgb, to_rgba
from .modelfile import ModelFile, ModelFileError, ModelInfo
from .target import TargetError, TargetOptions, load_target
from .train import EXPERIMENTS, Progress, TrainConfig, Trainer, TrainingFailed, TrainResult

__all__ = [
    "CHANNELS", "EXPERIMENTS", "FIRE_RATE", "HIDDEN", "NCA", "JobSpec", "ModelFile", "ModelFileError", "ModelInfo",
    "Progress", "SpecError", "TargetError", "TargetOptions", "TrainConfig", "TrainResult", "Trainer", "TrainingFailed",
    "alive_mask", "erase_circle", "load_target", "make_seed", "to_rgb", "to_rgba",
]
