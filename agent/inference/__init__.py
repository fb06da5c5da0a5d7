"""Inference stage: preprocess, engine (runtime and delegate), postprocess, pipeline."""
