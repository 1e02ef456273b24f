"""The pipeline's stages, one module each (see docs/architecture.md); the ordered registry is scaleclust.pipeline.STAGES."""
