"""attncluster: the Attention Clusters video classifier (Long et al., CVPR 2018) in PyTorch."""

from attncluster.errors import AttnClusterError, ConfigError, DataError

__version__ = "0.1.0"

# Imported on first use (PEP 562), so `import attncluster.<module>` stays light: the extract decode workers are
# spawned processes that import attncluster and must not pay for importing torch.
_LAZY = {
    "AttentionCluster": "attncluster.model",
    "Extractor": "attncluster.extract.pipeline",
    "classify_videos": "attncluster.predict",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attncluster' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["AttentionCluster", "AttnClusterError", "ConfigError", "DataError", "Extractor", "classify_videos",
           "__version__"]
