"""The ``evaluate`` metric module of paka_hf (load it with ``evaluate.load`` on ``paka_mean_iou.py``)."""
