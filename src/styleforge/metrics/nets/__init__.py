"""Vision networks used by the metrics, defined here (no torchvision) with the published checkpoints' layouts.

Each module's ``state_dict()`` has exactly the keys and shapes of the file its authors published, so that file
loads strictly; ``tests/test_metrics_layouts.py`` checks them against layouts written from the published
definitions.
"""
