"""The trainer's loops: fit (`fit.py`), evaluation (`evaluation.py`), predict (`predict.py`), helpers."""
