"""The demo pipeline run by configs/train.yaml (aetherium_hpc.demo.pipeline:run)."""
