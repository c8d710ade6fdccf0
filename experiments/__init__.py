"""Experiments: the `litlab` command line and one YAML file per recipe."""
