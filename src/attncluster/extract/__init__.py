"""Video files to features: decoding, backbones (Inception-v3, VGGish), PCA + quantization, writers.

Stages, one file each: ``graphdef`` (TensorFlow GraphDef reader), ``inception``, ``vggish``, ``pca``,
``features`` (:class:`~attncluster.extract.features.FeaturePipeline`). Import them from their modules; nothing here
imports torch models or optional packages eagerly.
"""
