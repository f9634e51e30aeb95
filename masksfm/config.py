"""The configuration: one typed tree of dataclasses, from YAML and `--set a.b=value` overrides.

`load_config(path_or_name, overrides)` starts from the defaults below, applies a YAML file (a path,
or the name of a shipped file in `masksfm/configs/`: default, paper, paper_dn), then the overrides.
An unknown key or a value of the wrong type is a MasksfmError naming it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from masksfm.errors import MasksfmError

# model.motion: any rigid motion | a car's camera (geometry.vehicle_chord) | a car's camera that may
# also travel along its vertical axis (geometry.vehicle_travel_basis: never sideways)
MOTIONS = ("free", "vehicle", "vehicle_vertical")
MASK_MODES = ("multimask", "none", "explainability", "automask", "multimask+automask")
DN_MODES = ("none", "snippet", "image_mean", "image_max")
GUARDS = ("none", "warmup", "floor")


@dataclass
class DataConfig:
    height: int = 128  # training image size, pixels
    width: int = 416
    snippet_length: int = 3  # odd; the target is the middle frame
    strides: list[int] = field(default_factory=lambda: [1])  # frame spacings of training snippets: every window at each spacing is an item
    augment: bool = True  # flip, scale-and-crop, colour jitter
    colour_jitter: bool = True  # with augment: monodepth2's colour jitter of the nets' input (the authors: none)
    independent_crop_scale: bool = False  # with augment: x and y enlarged by separate factors (the authors, SfMLearner's code)
    source_yaw: float = 0.0  # with augment: turn each source's camera by up to this many degrees about its vertical axis
    uneven_strides: bool = False  # with several strides: also snippets spaced by one before the target and another after it
    workers: int = 2  # DataLoader worker processes
    train_split: str = "train"
    val_split: str = "val"


@dataclass
class ModelConfig:
    depth: str = "dispnet"  # dispnet | resnet18
    pose: str = "snippet"  # snippet (SfMLearner: the whole snippet in, S poses out) | pairs (monodepth2)
    pose_encoder: str = "resnet18"  # resnet18 (monodepth2's, from scratch) | conv (SfMLearner's seven convolutions)
    motion: str = "vehicle"  # vehicle (a car's camera: along the chord of a planar arc) | vehicle_vertical (that chord tilted up or down: no sideways travel) | free (any rigid motion)
    pretrained: str | None = None  # safetensors weights for the ResNet-18 encoder (never downloaded)
    source_depth_grad: bool = False  # True: the loss trains the depth net through the sources' depth too (False: targets' only)
    pose_mirror_mean: bool = False  # the pose net's poses the mean of its reading of the snippet and of its mirror image, in training too (networks.pose.MirrorMean)
    pose_downsample: int = 1  # the pose net reads the frames averaged over f x f pixel blocks (networks.pose.Downsampled); 1 = at the training size
    joint_pose_batch: bool = True  # the pose net reads the relations' snippets in one batch with the training snippets (False: a call of their own)


@dataclass
class LossConfig:
    mask: str = "multimask"  # multimask | none | explainability | automask | multimask+automask
    repeats: int = 0  # extra rounds of repeated masking
    overlap_tolerance: float = 0.1  # τ of the overlap mask (0 = the paper; 0.1 measured best, README)
    dn: str = "none"  # depth normalisation: none | snippet | image_mean | image_max
    ssim: str = "box3"  # box3 (monodepth2) | gauss13 (the authors)
    rho: str = "l1"  # l1 | robust (the authors' (|x| + 0.01)^0.4)
    ssim_weight: float = 0.85
    scales: str = "upsample"  # upsample (monodepth2) | downsample (SfMLearner, the authors)
    num_scales: int = 4  # how many of the depth net's 4 scales enter the loss
    bidirectional: bool = True  # reconstruct t from s and s from t
    below_mean_mask: bool = False  # keep only pixels below the masked mean error (authors' command)
    below_mean_factor: float = 1.0  # below_mean_mask: threshold = factor x masked mean (the authors' code: 3)
    below_mean_per_channel: bool = False  # below_mean_mask: compare each colour channel's error (the authors' code)
    image_range: str = "unit"  # the images the loss sees: unit [0, 1] | signed [-1, 1] (the authors' Normalize(0.5, 0.5))
    smoothness_on: str = "disparity_mean_normalised"  # disparity_mean_normalised (monodepth2) | depth (the authors)
    smoothness_frames: str = "all"  # all frames of a snippet | target (the authors)
    combine_sources: str = "mean"  # photometric term over a snippet's sources: mean | sum (the authors)
    smoothness_weight: float = 1e-3
    consistency_weight: float = 0.0  # SC-SfMLearner's geometric (depth scale) consistency; 0 = off
    turn_weight: float = 0.0  # the pose net's rotation to turned sources against its rotation to them unturned (losses.turn_inconsistency); 0 = off
    turn_degrees: float = 1.0  # turn_weight: each source turned by an angle uniform in ± this many degrees
    stride_weight: float = 0.0  # the pose net's poses to sources two frames away against its poses one frame away, twice (losses.stride_inconsistency); 0 = off
    stride_from_step: int = 0  # stride_weight: the term counts from this step on (the pose net's distances are tiny before)
    shift_weight: float = 0.0  # the pose net's readings of a pair of neighbouring frames from snippets one frame apart against each other's inverse (losses.shift_inconsistency); 0 = off
    shift_from_step: int = 0  # shift_weight: the term counts from this step on
    shift_rotation: bool = False  # shift_weight: also hold the two readings' rotations to each other's inverse (False: the distances only)
    virtual_weight: float = 0.0  # the pose net's reading of the target re-rendered from a camera moved by a known motion (objective.add_virtual_motion); 0 = off
    virtual_from_step: int = 200  # virtual_weight: the term counts from this step on (the pose net's distances are tiny before)
    virtual_spread: float = 0.5  # virtual_weight: the moved camera travels u x the pose net's reading of the real source, u uniform in 1 ± this
    virtual_degrees: float = 0.5  # virtual_weight: and turns by an angle uniform in ± this many degrees about its vertical axis
    logit_bound: float = 0.0  # hold the depth net's disparity logits within ± this (losses.logit_excess); 0 = off
    logit_bound_weight: float = 3e-3  # logit_bound: the weight of the mean squared excess over every frame, summed over scales
    velocity_weight: float = 0.0  # the constant-velocity prior on the pose net's steps (losses.velocity_change); 0 = off
    smoothness_scale_base: float = 2.0  # the smoothness weight is divided by base^scale
    explainability_weight: float = 0.2  # SfMLearner's regulariser, loss.mask = explainability only
    guard: str = "floor"  # against the collapse of masked losses from scratch: floor | warmup | none
    warmup_steps: int = 300  # guard=warmup: steps of unmasked (border-padded) loss before the masks
    floor: float = 0.5  # guard=floor: the weight of the pixels the masks drop (kept pixels weigh 1)
    floor_out_of_view: bool = False  # guard=floor: whether the floor also lifts out-of-view (edge-masked) pixels


@dataclass
class OptimConfig:
    lr: float = 2e-4
    pose_lr_scale: float = 1.0  # the pose net's learning rate is lr × this
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    lr_decay_steps: list[int] = field(default_factory=list)  # multiply lr by 0.1 at these steps
    ema_decay: float = 0.0  # the weights a run is used with (eval, predict, export, best): an exponential moving average of the trained ones with this decay (training.weight_average); 0 = the trained weights
    batch_size: int = 4  # global batch (split over DDP processes)
    steps: int = 20000


@dataclass
class TrainConfig:
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 (depth net under bf16 autocast; auto: where the device has it)
    compile: bool = True  # torch.compile the photometric error (needs a C++ compiler; falls back to eager)
    checkpoint_every: int = 500  # write checkpoints/last every N steps
    log_every: int = 25  # scalars to TensorBoard
    image_every: int = 250  # images to TensorBoard
    val_every: int = 500  # validation abs_rel (data with depth) -> checkpoints/best
    val_images: int = 64  # validation frames, at most
    batch_norm_batches: int = 100  # after the last step and for each save of best, the pose net's batch-norm statistics recomputed over this many batches of training snippets without augmentation (0: kept as training left them)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "loss.mask": MASK_MODES,
    "loss.dn": DN_MODES,
    "loss.ssim": ("box3", "gauss13"),
    "loss.rho": ("l1", "robust"),
    "loss.scales": ("upsample", "downsample"),
    "loss.guard": GUARDS,
    "loss.image_range": ("unit", "signed"),
    "loss.smoothness_on": ("disparity_mean_normalised", "depth"),
    "loss.smoothness_frames": ("all", "target"),
    "loss.combine_sources": ("mean", "sum"),
    "model.depth": ("dispnet", "resnet18"),
    "model.pose": ("snippet", "pairs"),
    "model.pose_encoder": ("conv", "resnet18"),
    "model.motion": MOTIONS,
    "train.precision": ("auto", "fp32", "bf16"),
}


def _coerce(key: str, value, kind):
    """Check (and gently convert) a value against a dataclass field's annotation."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        kind = next(o for o in options if o is not type(None))
        origin = typing.get_origin(kind)
    if origin is list:
        if not isinstance(value, list):
            raise MasksfmError(f"config key {key}: expected a list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_coerce(key, v, item) for v in value]
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = str(value)
            if key in CHOICES and value not in CHOICES[key]:
                raise MasksfmError(f"config key {key}: {value!r} is not one of {', '.join(CHOICES[key])}")
            return value
    raise MasksfmError(f"config key {key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def _apply(node, values: dict, prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise MasksfmError(f"config {prefix.rstrip('.') or 'file'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(node))
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in hints:
            raise MasksfmError(f"unknown config key {name!r}")
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, name + ".")
        else:
            setattr(node, key, _coerce(name, value, hints[key]))


def from_dict(values: dict) -> Config:
    """A Config from a (possibly partial) nested dict; unknown keys are errors."""
    config = Config()
    _apply(config, values or {})
    validate(config)
    return config


# Keys whose default changed, with the value a configuration stored before the key existed ran with:
# a run folder or checkpoint of then is read back as it was trained (the pose net unwrapped, the
# sources' depth with gradient, SfMLearner's pose convolutions, one learning rate, the batch norms'
# statistics as training left them), not as today's
# default would train it.
STORED_BEFORE_THE_KEY = {("model", "motion"): "free", ("model", "source_depth_grad"): True,
                         ("model", "pose_encoder"): "conv", ("optim", "pose_lr_scale"): 1.0,
                         ("train", "batch_norm_batches"): 0}


def stored_config(values: dict) -> Config:
    """The Config of a run as stored (a checkpoint's, a run folder's): `from_dict`, with the keys it
    predates at the values it ran with (`STORED_BEFORE_THE_KEY`)."""
    values = {section: dict(items) if isinstance(items, dict) else items for section, items in (values or {}).items()}
    for (section, key), value in STORED_BEFORE_THE_KEY.items():
        if isinstance(values.get(section, {}), dict):
            values.setdefault(section, {}).setdefault(key, value)
    return from_dict(values)


def pose_net_reads(height: int, width: int, factor: int) -> bool:
    """Whether a pose net on factor x factor pixel blocks (`model.pose_downsample`) can read frames of
    height x width pixels: multiples of factor, at least 32x32 blocks (the nets' smallest input)."""
    return height % factor == 0 and width % factor == 0 and min(height, width) // factor >= 32


def validate(config: Config) -> None:
    """Cross-field checks a user can trip over."""
    if config.data.snippet_length < 3 or config.data.snippet_length % 2 == 0:
        raise MasksfmError(f"config key data.snippet_length: must be odd and >= 3, got {config.data.snippet_length}")
    if not config.data.strides or any(not isinstance(k, int) or k < 1 for k in config.data.strides):
        raise MasksfmError(f"config key data.strides: a list of positive frame spacings, got {config.data.strides}")
    evenly_spaced = [key for key in ("velocity_weight", "stride_weight", "shift_weight") if getattr(config.loss, key) > 0]
    if config.data.uneven_strides and evenly_spaced:
        raise MasksfmError(f"config key data.uneven_strides: loss.{evenly_spaced[0]} compares the steps of evenly "
                           "spaced frames; turn one of them off")
    if not 0 <= config.optim.ema_decay < 1:
        raise MasksfmError(f"config key optim.ema_decay: from 0 (off) up to below 1, got {config.optim.ema_decay}")
    if not 0 <= config.data.source_yaw <= 10:
        raise MasksfmError(f"config key data.source_yaw: degrees from 0 to 10, got {config.data.source_yaw}")
    if not 0 < config.loss.turn_degrees <= 10:
        raise MasksfmError(f"config key loss.turn_degrees: degrees above 0 up to 10, got {config.loss.turn_degrees}")
    if not 0 <= config.loss.virtual_degrees <= 10:
        raise MasksfmError(f"config key loss.virtual_degrees: degrees from 0 to 10, got {config.loss.virtual_degrees}")
    if not 0 <= config.loss.virtual_spread < 1:
        raise MasksfmError(f"config key loss.virtual_spread: from 0 up to below 1, got {config.loss.virtual_spread}")
    if min(config.data.height, config.data.width) < 32:
        raise MasksfmError(f"config data.height x data.width: at least 32x32, got {config.data.height}x{config.data.width}")
    if not 1 <= config.loss.num_scales <= 4:
        raise MasksfmError(f"config key loss.num_scales: 1 to 4, got {config.loss.num_scales}")
    if config.model.pose == "pairs" and config.loss.mask == "explainability":
        raise MasksfmError("config key model.pose: pairs has no explainability decoder; use snippet with loss.mask=explainability")
    if config.model.pose_encoder == "resnet18" and config.loss.mask == "explainability":
        raise MasksfmError("config key model.pose_encoder: resnet18 has no explainability decoder; use conv with loss.mask=explainability")
    factor = config.model.pose_downsample
    if not 1 <= factor <= 4:
        raise MasksfmError(f"config key model.pose_downsample: 1 to 4, got {factor}")
    if not pose_net_reads(config.data.height, config.data.width, factor):
        raise MasksfmError(f"config key model.pose_downsample: the pose net reads {factor}x{factor} pixel blocks, at "
                           f"least 32x32 of them: data.height and data.width must be multiples of {factor} from "
                           f"{32 * factor}, got {config.data.height}x{config.data.width}")
    wrappers = {"model.pose_downsample": (factor > 1, "a downsampled pose net"),
                "model.pose_mirror_mean": (config.model.pose_mirror_mean, "the mirror mean")}
    for key, (on, what) in wrappers.items():
        if on and config.loss.mask == "explainability":
            raise MasksfmError(f"config key {key}: {what} has no explainability masks; use another loss.mask")
    for key in ("smoothness_weight", "consistency_weight", "velocity_weight", "turn_weight", "stride_weight", "shift_weight",
                "virtual_weight", "logit_bound", "logit_bound_weight"):
        if getattr(config.loss, key) < 0:
            raise MasksfmError(f"config key loss.{key}: must be >= 0, got {getattr(config.loss, key)}")
    if config.loss.below_mean_factor <= 0:
        raise MasksfmError(f"config key loss.below_mean_factor: must be positive, got {config.loss.below_mean_factor}")
    if config.loss.combine_sources == "sum" and config.loss.mask == "automask":
        raise MasksfmError("config key loss.combine_sources: sum adds per-source terms; loss.mask=automask has one "
                           "term for all sources (the per-pixel minimum); use mean")
    for key in ("stride_from_step", "shift_from_step", "virtual_from_step"):
        if getattr(config.loss, key) < 0:
            raise MasksfmError(f"config key loss.{key}: must be >= 0, got {getattr(config.loss, key)}")
    if config.train.batch_norm_batches < 0:
        raise MasksfmError(f"config key train.batch_norm_batches: must be >= 0 (0: off), got {config.train.batch_norm_batches}")
    for key in ("optim.batch_size", "optim.steps", "train.checkpoint_every", "train.log_every", "train.val_every"):
        section, name = key.split(".")
        if getattr(getattr(config, section), name) <= 0:
            raise MasksfmError(f"config key {key}: must be positive")


def shipped_config(name: str) -> Path:
    """Path of a configuration shipped with the package (`default`, `paper`, `paper_dn`)."""
    return Path(str(resources.files("masksfm") / "configs" / f"{name}.yaml"))


def read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise MasksfmError(f"{path}: cannot read config ({error.strerror})") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise MasksfmError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    return values or {}


def parse_override(text: str) -> tuple[list[str], object]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML: 3 -> int, 1e-4 -> float, [1, 2] -> list)."""
    if "=" not in text:
        raise MasksfmError(f"--set {text!r}: expected KEY=VALUE, e.g. loss.repeats=3")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-4 as a string (it wants 1.0e-4); numbers are what people mean.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(config: Config, overrides: list[str] = (), check: bool = True) -> Config:
    """Apply `a.b=value` overrides to a config (in place) and validate it (unless `check` is False: the
    caller changes more and validates after)."""
    for text in overrides:
        keys, value = parse_override(text)
        nested: dict = value  # type: ignore[assignment]
        for key in reversed(keys):
            nested = {key: nested}
        _apply(config, nested)
    if check:
        validate(config)
    return config


def load_config(config: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The defaults, then a YAML file (path or shipped name), then `a.b=value` overrides."""
    values: dict = {}
    if config is not None:
        path = Path(config)
        if not path.exists() and shipped_config(str(config)).exists():
            path = shipped_config(str(config))
        if not path.exists():
            raise MasksfmError(f"{config}: no such config file (shipped names: default, paper, paper_dn)")
        values = read_yaml(path)
    return apply_overrides(from_dict(values), overrides)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
