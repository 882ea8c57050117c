"""The reference programs, ported by changing only the import and base-class names (synthetic data)."""
