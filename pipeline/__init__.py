"""The pipeline: events → queue → worker → assembler → MLflow sink. Installed as ``spanline.pipeline``."""
