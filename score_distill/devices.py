"""Where models run: one `device` setting, "auto", "cpu", "cuda" or "cuda:N".

"auto" is the first CUDA device when torch sees one, else the CPU. A device that is asked
for and absent is a usage error in one line, raised before anything loads: a run that
silently fell back to the CPU would take hours where the user planned minutes.

Generation (evaluation, MPS, the engine RL samples with) runs on the resolved device.
Training (SFT, RL) runs one process per GPU through accelerate, which gives each process
its own GPU: it takes the device's kind ("cpu" or "cuda"); which GPUs it uses is chosen
with `CUDA_VISIBLE_DEVICES`, so "cuda:N" is refused there rather than ignored.

    >>> resolve_device("cpu")
    'cpu'
"""

from __future__ import annotations

from score_distill.config import UsageError

AUTO = "auto"
HELP = "where models run: auto (a CUDA GPU when one is visible, else the CPU), cpu, cuda or cuda:N"


class DeviceError(UsageError):
    """A device that does not exist here, or a setting that names none."""


def _cuda() -> tuple[bool, int]:
    import torch

    available = torch.cuda.is_available()
    return available, torch.cuda.device_count() if available else 0


def resolve_device(spec: str) -> str:
    """The torch device string `spec` names here; `DeviceError` when it is not here."""
    spec = spec.strip().lower()
    if spec == "cpu":
        return "cpu"
    available, count = _cuda()
    if spec == AUTO:
        return "cuda" if available else "cpu"
    kind, colon, index = spec.partition(":")
    if kind != "cuda" or (colon and not index.isdigit()):
        raise DeviceError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if not available:
        import torch

        raise DeviceError(f"device {spec!r} asked for, but torch sees no CUDA device here (torch {torch.__version__}, "
                          f"CUDA build {torch.version.cuda or 'none'}); use --device cpu or auto")
    if colon and int(index) >= count:
        raise DeviceError(f"device {spec!r}: torch sees {count} CUDA device{'s' if count != 1 else ''} here")
    return spec


def training_device(spec: str) -> str:
    """The device kind training runs on ("cpu" or "cuda"), for `spec` resolved here."""
    device = resolve_device(spec)
    if device.startswith("cuda:"):
        raise DeviceError(f"device {spec!r}: training gives each process its own GPU (accelerate); "
                          "choose them with CUDA_VISIBLE_DEVICES and set the device to cuda")
    return device
