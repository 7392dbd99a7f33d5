"""attncluster: the Attention Clusters video classifier (Long et al., CVPR 2018) in PyTorch."""

from attncluster.errors import AttnClusterError, ConfigError, DataError
from attncluster.model import AttentionCluster

__version__ = "0.1.0"

__all__ = ["AttentionCluster", "AttnClusterError", "ConfigError", "DataError", "__version__"]
