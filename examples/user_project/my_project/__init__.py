"""An example user project: its own model and data, trained by `launch` through its own config files."""
