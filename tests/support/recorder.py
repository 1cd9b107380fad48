"""The recording upstream lives in `mailproxy.testing`, where plugin authors get it too."""

from mailproxy.testing.recorder import RecordedSession, RecordingUpstream

__all__ = ["RecordedSession", "RecordingUpstream"]
