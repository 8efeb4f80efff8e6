"""The query pipeline (see pipeline.py) and the galleries it searches."""
