"""What one request may cost, and how a refused request is answered. Standard library only, so the command line
reads the defaults from here without importing NumPy, FastAPI or PyTorch."""

from __future__ import annotations

from dataclasses import dataclass

from attncluster.errors import ConfigError

MiB = 1 << 20


@dataclass
class ServeLimits:
    """What one request may cost. Size limits answer 413, the time limits 504. The one source of ``serve``'s
    defaults: the command line's ``--max-*`` and ``--*-timeout`` flags default to these fields."""

    max_body_bytes: int = 32 * MiB        # features requests (JSON or an uploaded TFRecord / npz)
    max_video_bytes: int = 256 * MiB      # /v1/predict/video uploads
    max_videos: int = 1024                # videos (records) per request: a video-level shard holds ~300
    max_frames: int = 300                 # frames per video: data.records.MAX_FRAMES (a test holds them equal)
    request_timeout_s: float = 30.0       # from the first byte of the body to the answer
    video_timeout_s: float = 300.0        # the same for /v1/predict/video (decoding and backbones take longer)

    def check(self) -> None:
        for name in ("max_body_bytes", "max_video_bytes", "max_videos", "max_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "video_timeout_s"):
            if not getattr(self, name) > 0:
                flag = "--" + name[:-2].replace("_", "-")
                raise ConfigError(f"{flag}: must be > 0 seconds, got {getattr(self, name)}")


class RequestError(Exception):
    """A request the service refuses: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())  # one line, whatever the cause's text


__all__ = ["MiB", "RequestError", "ServeLimits"]
