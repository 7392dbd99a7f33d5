"""Video files to features: decode (``decode.py``), backbones (``features.py``), shards (``writer.py``), and the
parallel driver (``pipeline.py``)."""
