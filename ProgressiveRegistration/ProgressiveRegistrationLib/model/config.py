"""Configuration dataclasses with the paper's values as defaults, loaded from JSON or YAML.

A run is reproducible from its config file plus the seed in it. Unknown keys are errors
(a typo must not silently fall back to a default). Overrides use dotted keys::

    cfg = load_config("configs/cpu.yaml", ["train.iterations=2000", "schedule.delta=500"])
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..core.atomic import write_text
from ..core.checks import check_network_size
from ..core.errors import InputError


@dataclass
class SplineConfig:
    """One random cubic spline transform (paper Table I): control grid and uniform ranges.

    ``range_vox`` are half-widths of the uniform distributions along (x, y, z), in voxels
    of a 128³ grid (scaled by N/128 for other sizes).
    """

    grid: int
    range_vox: tuple[float, float, float]


@dataclass
class SynthesisConfig:
    """Training-pair generator (paper Sec. II-E, Table I, Fig. 3)."""

    size: int = 128
    t1: list[SplineConfig] = field(default_factory=lambda: [SplineConfig(2, (6.4, 6.4, 6.4))])
    t2: list[SplineConfig] = field(default_factory=lambda: [SplineConfig(4, (3.2, 6.4, 12.8)),
                                                             SplineConfig(8, (3.2, 3.2, 3.2))])
    gradient_sigma_vox: float = 0.5
    #: HU are divided by this before the gradient magnitude (network input scale).
    intensity_scale_hu: float = 1000.0
    lung_margin_mm: float = 8.0
    crop_to_lungs: bool = True
    #: Share of pairs whose ``t2`` is shrunk towards the identity (its displacement field times a
    #: factor drawn uniformly from [0, ``identity_scale``]): nearly aligned pairs, on which the
    #: network must stay still (a second pass of a cascade sees such pairs). Not in the paper: 0.
    identity_fraction: float = 0.0
    identity_scale: float = 0.1
    #: Share of pairs whose ``t2`` is the breathing simulator's motion instead of the splines
    #: (:func:`simulation.breathing.breathing_field_lps` on the training crop: superior–inferior
    #: motion from the diaphragm inside the lungs' footprint, the anterior chest a third of it),
    #: its diaphragm amplitude drawn uniformly from ``breathing_si_mm`` (mm). Not in the paper: 0.
    #: Each training volume then keeps the simulator's two basis fields (6 MB at 64³, 50 MB at 128³).
    breathing_fraction: float = 0.0
    breathing_si_mm: tuple[float, float] = (10.0, 70.0)

    def inference_input(self) -> dict:
        """What registration needs to prepare a network's input the way it was trained: the
        ``input`` block of a model file (read back by ``modelfile.load_model``)."""
        return {"size": self.size, "gradient_sigma_vox": self.gradient_sigma_vox,
                "intensity_scale_hu": self.intensity_scale_hu, "lung_margin_mm": self.lung_margin_mm,
                "crop_to_lungs": self.crop_to_lungs}


@dataclass
class NetworkConfig:
    """The U-Net (paper Sec. II-A): 5 levels, 16 channels at the finest level, doubling."""

    levels: int = 5
    base_channels: int = 16
    in_channels: int = 2
    leaky_slope: float = 0.01
    bn_momentum: float = 0.1


@dataclass
class ScheduleConfig:
    """Trapezoid schedule (paper Eq. 2): transition length δ and level duration Δ."""

    delta: int = 2000
    Delta: int = 6000
    progressive: bool = True


@dataclass
class TrainConfig:
    iterations: int = 20000
    lr: float = 1e-2
    momentum: float = 0.5
    batch_size: int = 1
    snapshot_every: int = 50
    #: Also keep every K-th snapshot's models as ``snapshots/model[_baseline]_<iteration>.pt``
    #: (model files, like ``model.pt``), to evaluate the test set throughout training as the
    #: paper's Fig. 5B does; 0 keeps only the final models. K is in snapshots, not iterations.
    keep_snapshots: int = 0
    seed: int = 0
    workers: int = 1
    #: 'progressive', 'baseline' or 'both' (side by side on the same pairs, paper Sec. III).
    mode: str = "both"
    #: Training images: files, folders (searched for images) or DICOM series folders.
    images: list[str] = field(default_factory=list)
    #: Held-out images for the validation pairs; if empty, the last training image is held out.
    validation_images: list[str] = field(default_factory=list)
    validation_pairs: int = 4
    #: Optional landmark validation: list of {fixed, moving, fixed_landmarks, moving_landmarks}.
    validation_landmarks: list[dict] = field(default_factory=list)
    threads: int = 0
    device: str = "cpu"
    #: Train in the channels-last 3D layout: oneDNN's 3D convolutions run ~1.1x faster in it on
    #: this CPU (16…128 channels at 64³, one thread: benchmarks/results/training.md). The
    #: numbers agree with the default layout to float32 rounding, not bit for bit.
    channels_last: bool = False
    #: A model file whose weights start every arm (fine-tuning; "" starts from random weights).
    #: Its network block must equal ``network``. With ``mode: baseline`` every level trains at once.
    init_model: str = ""


@dataclass
class Config:
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, data, where: str):
    if not dataclasses.is_dataclass(cls):
        return data
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise InputError(f"config {where or 'root'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"config {where or 'root'}: unknown key(s) {', '.join(unknown)} "
                         f"(known: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        ftype = fields[name].type
        sub = f"{where}.{name}" if where else name
        if name in ("t1", "t2"):
            value = [_build(SplineConfig, v, sub) for v in value]
        elif ftype in ("SynthesisConfig", "NetworkConfig", "ScheduleConfig", "TrainConfig"):
            value = _build(globals()[ftype], value, sub)
        elif name in ("range_vox", "breathing_si_mm"):
            try:
                value = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                raise InputError(f"config {sub}: expected a list of numbers, got {value!r}") from None
        kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    return _build(Config, data, "")


def _parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"override {item!r}: expected key=value, e.g. train.iterations=500")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(value)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- file (JSON or YAML) <- ``key=value`` overrides."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{path}: no such config file")
        text = p.read_text(encoding="utf-8")
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as err:  # noqa: BLE001 - any parse error is the user's file
            raise InputError(f"{path}: cannot parse config ({err})") from None
    data = apply_overrides(data, overrides or [])
    cfg = config_from_dict(data)
    check_network_size(cfg.synthesis.size, cfg.network.levels, "config: synthesis.size")
    if cfg.train.mode not in ("progressive", "baseline", "both"):
        raise InputError(f"config: train.mode must be progressive, baseline or both, not {cfg.train.mode!r}")
    device = str(cfg.train.device)
    if not (device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise InputError(f"config: train.device must be cpu, cuda or cuda:N, not {device!r}")
    for key, least in (("iterations", 1), ("snapshot_every", 1), ("batch_size", 1), ("keep_snapshots", 0)):
        value = getattr(cfg.train, key)
        if not isinstance(value, int) or value < least:
            raise InputError(f"config: train.{key} must be an integer of at least {least}, not {value!r}")
    syn = cfg.synthesis
    for key in ("identity_fraction", "breathing_fraction"):
        value = getattr(syn, key)
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise InputError(f"config: synthesis.{key} must be a share from 0 to 1, not {value!r}")
    if not isinstance(syn.identity_scale, (int, float)) or not 0.0 <= syn.identity_scale <= 1.0:
        raise InputError(f"config: synthesis.identity_scale must be from 0 to 1, not {syn.identity_scale!r}")
    if len(syn.breathing_si_mm) != 2 or not 0.0 <= syn.breathing_si_mm[0] <= syn.breathing_si_mm[1]:
        raise InputError("config: synthesis.breathing_si_mm must be [low, high] mm with 0 <= low <= high, not "
                         f"{list(syn.breathing_si_mm)}")
    if cfg.train.init_model and cfg.train.mode != "baseline":
        raise InputError("config: train.init_model fine-tunes a grown network: it needs train.mode baseline "
                         f"(every level at once), not {cfg.train.mode!r}")
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    write_text(path, json.dumps(cfg.to_dict(), indent=2))
