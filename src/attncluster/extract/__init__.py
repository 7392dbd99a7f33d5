"""Video files to features: decoding, backbones (Inception-v3, VGGish), PCA + quantization, writers.

Stages, one file each: ``decode`` (PyAV, the official frame sampling rule), ``graphdef`` (TensorFlow GraphDef
reader), ``inception``, ``vggish``, ``pca``, ``features`` (:class:`~attncluster.extract.features.FeaturePipeline`),
``writer`` (shards + manifest) and ``pipeline`` (parallel decode, batched model, ``run_extract``,
``classify_videos``). Import them from their modules; nothing here imports torch models or optional packages
eagerly.
"""
