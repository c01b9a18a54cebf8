"""The errors that mean bad input or settings (a message for people), not a bug (a traceback)."""
from protocols import ProtocolError
from reports.compare import CompareError

from .audio import BadAudio
from .cache import CacheError
from .config import ConfigError
from .datasets import DatasetError
from .features import FeatureError
from .ray_engine import EngineError
from .runfolder import RunFolderError
from .tracking import TrackingError
from .train import TrainingError

USER_ERRORS = (BadAudio, CacheError, ConfigError, DatasetError, FeatureError, ProtocolError, RunFolderError,
               TrainingError, TrackingError, CompareError, EngineError)
