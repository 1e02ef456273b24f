"""Every config section of the clustering methods, and their base. Plain pydantic, no torch: reading a
config (scaleclust.config composes these) must not load torch, because every Ray worker imports the
config and most never touch a model. Each method's module (scan.py, mlc.py, ...) builds on its section."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    """Base for config sections: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class HeadsConfig(Strict):
    """What every multi-head method trained on neighbours shares (cluster.scan, .spice, .sic, .scl): heads
    on frozen embeddings, Adam, counted in steps, the lowest-loss head kept (label-free). One recipe for
    all: a 512-wide trunk and 5 neighbours won for SCAN on all three labelled sets, then lifted SPICE and
    SIC above their linear heads with 20 neighbours (docs/measurements.md#methods-x-data-sets)."""

    heads: int = Field(10, gt=0, description="heads trained at once; the one with the lowest loss is kept")
    hidden: int = Field(512, ge=0, description="width of the shared Linear-BN-ReLU trunk; 0 = linear heads")
    steps: int = Field(600, gt=0, description="steps of the method's first phase")
    self_label_steps: int = Field(200, ge=0, description="further steps adding labels of confident/reliable rows")
    agreement: float = Field(0.0, ge=0, le=1, description="self-labelling also needs this share of a row's "
                             "neighbours predicted in its cluster (SPICE's reliable set); 0 = confidence alone")
    batch_size: int = Field(256, gt=0, description="rows per step per worker")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="Adam weight decay")
    neighbors: int = Field(5, gt=0, description="neighbours per row, from the index (index.nprobe)")
    select_steps: int = Field(50, gt=0, le=50, description="last steps whose per-head losses choose the head")


class ScanConfig(HeadsConfig):
    """SCAN (cluster.method scan): kNN consistency + entropy over several heads, the lowest-loss head
    kept, then self-labelling on confident rows; counted in steps."""

    entropy_weight: float = Field(5.0, ge=0, description="weight of the entropy of the mean prediction")
    threshold: float = Field(0.99, gt=0, lt=1, description="self-labelling: top probability above which a row is confident")


class SicConfig(HeadsConfig):
    """SIC (cluster.method sic): SCAN's kNN consistency + entropy plus cross-entropy on semantic
    pseudo-labels, drawn per batch from the nouns of the run's semantic space (label.*) nearest to each
    cluster's image centre; needs an encoder with a text tower (CLIP) or classifier weights (timm)."""

    self_label_steps: int = Field(0, ge=0, description="further steps adding SCAN's self-labelling (SIC has none)")
    entropy_weight: float = Field(5.0, ge=0, description="weight of the entropy of the mean prediction (lambda)")
    semantic_weight: float = Field(0.1, ge=0, description="weight of the semantic pseudo-label cross-entropy (beta)")
    threshold: float = Field(0.99, gt=0, lt=1, description="self-labelling: top probability above which a row is confident")
    space_nouns: int = Field(500, gt=0, description="nouns kept nearest each k-means centre of the assign sample "
                             "(gamma_r); their union is SIC's semantic space")
    centre_rows: float = Field(0.9, gt=0, le=1, description="share of a cluster's n/K top rows that make its image "
                               "centre (xi_c)")
    centre_nouns: int = Field(30, gt=0, description="nouns nearest an image centre that make its semantic centre (xi_a)")


class SpiceConfig(HeadsConfig):
    """SPICE (cluster.method spice): prototype pseudo-labels per batch over several heads, then
    self-training on the reliable set (neighbours agree, confident, balanced); counted in steps."""

    batch_size: int = Field(512, gt=0, description="rows per step per worker (SPICE's prototypes need >= ~10 K)")
    top_fraction: float = Field(0.5, gt=0, description="top rows per cluster (x B/K) that make its prototype")
    agreement: float = Field(0.9, gt=0, le=1, description="reliable: share of neighbours with the row's label")
    confidence: float = Field(0.99, gt=0, lt=1, description="reliable: top probability at least this")


class SclConfig(HeadsConfig):
    """SCL (cluster.method scl): SCAN's heads and trunk and, beside the heads, a learnt unit projection of
    the trunk; SCAN's consistency + entropy, plus the cluster-aware contrastive term on the projection,
    which shapes the trunk (positives: batch rows and neighbours that share the row's pseudo-label)."""

    self_label_steps: int = Field(0, ge=0, description="further steps adding SCAN's self-labelling")
    projection: int = Field(128, gt=0, description="width of the unit projection the contrastive term reads")
    entropy_weight: float = Field(5.0, ge=0, description="weight of the entropy of the mean prediction")
    contrastive_weight: float = Field(1.0, ge=0, description="weight of the cluster-aware contrastive term")
    temperature: float = Field(0.1, gt=0, description="contrastive temperature tau")
    label_confidence: float = Field(0.7, ge=0, le=1, description="rows (and neighbours) whose heads' mean top "
                                    "probability is below this take no part in the contrastive term")
    threshold: float = Field(0.99, gt=0, lt=1, description="self-labelling: top probability above which a row is confident")


class MLCConfig(Strict):
    """`cluster.mlc`: MLC hyper-parameters (the CIFAR recipe of ALGORITHMS.md, scaled down), counted in
    steps, not epochs. Defaults: the settings benchmarked in docs/measurements.md (a demo-size fit in
    minutes on a CPU); GPUs can afford the recipe's own (hidden 4096, out_dim 128, batch_size 1024;
    ImageNet: hidden 2048, out_dim 1024, eta 0.12, warmup_steps 2000)."""

    hidden: int = Field(512, gt=0, description="width of the head's hidden layers")
    out_dim: int = Field(32, gt=0, description="dimension of the Z (subspace) and C (cluster) features")
    eps2: float = Field(0.1, gt=0, description="coding precision eps^2 of the rate terms")
    eta: float = Field(0.175, gt=0, description="Sinkhorn entropy weight of the membership Pi")
    sinkhorn_iters: int = Field(5, gt=0, description="Sinkhorn iterations per step")
    gamma: float = Field(1.0, ge=0, description="weight of the compression term Rc")
    pi_reg: float = Field(0.05, ge=0, description="weight of ||Pi||_F^2 / 2")
    lr: float = Field(1e-4, gt=0, description="SGD learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay of the body and Z head")
    weight_decay_c: float = Field(5e-3, ge=0, description="weight decay of the C head")
    batch_size: int = Field(512, ge=2, description="rows per step on each Train worker")
    steps: int = Field(300, gt=0, description="training steps (not epochs: small samples are not under-trained)")
    warmup_steps: int = Field(50, ge=0, description="first steps that optimise the rate R(Z) only")

    @model_validator(mode="after")
    def _warmup_before_end(self) -> "MLCConfig":
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps: {self.warmup_steps} leaves no step of clustering in {self.steps} "
                             "steps; lower cluster.mlc.warmup_steps or raise cluster.mlc.steps")
        return self


class TurtleConfig(Strict):
    """TURTLE (cluster.method turtle): a linear task encoder over the embeddings (or over several spaces
    concatenated in each row, `dims`), bilevel with linear inner classifiers; no neighbours. The reference
    runs 6000 steps of batch 10k; 1000 steps already converge on demo-size sets on a CPU."""

    dims: list[int] | None = Field(None, description="widths of the spaces concatenated in each embedding; null = one")
    gamma: float = Field(10.0, ge=0, description="weight of the entropy of the mean labelling")
    inner_steps: int = Field(10, gt=0, description="Adam steps of the inner linear classifiers per step (M)")
    inner_lr: float = Field(1e-3, gt=0, description="learning rate of the inner classifiers")
    outer_lr: float = Field(1e-3, gt=0, description="learning rate of the task encoder")
    warm_start: bool = Field(True, description="keep the inner classifiers across steps (else refit from scratch)")
    batch_size: int = Field(10_000, ge=2, description="rows per step per worker")
    steps: int = Field(1000, gt=0, description="outer steps of the task encoder")

    @field_validator("dims")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) <= 0):
            raise ValueError("give each space's width (> 0), e.g. [512, 768], or null for one space")
        return value
