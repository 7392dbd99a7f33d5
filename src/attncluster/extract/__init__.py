"""Video files to features: decoding, backbones (Inception-v3, VGGish), PCA + quantization, writers.

Stages, one file each: ``decode`` (PyAV, the official frame sampling rule), ``graphdef`` (TensorFlow GraphDef
reader), ``inception``, ``vggish``, ``pca``, ``features`` (:class:`~attncluster.extract.features.FeaturePipeline`),
``writer`` (shards + manifest) and ``pipeline`` (parallel decode, batched model, ``run_extract``). Import them from
their modules; nothing here imports torch models or optional packages eagerly, and nothing in ``extract/`` imports
the modules above it (config, inference, the verbs): classifying videos with a model is ``predict``'s
(``attncluster.predict.classify_videos``).
"""
