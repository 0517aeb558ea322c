"""Operations as the agent runs them: one at a time per node (runner.py), journaled step by
step in SQLite (journal.py, the only sqlite3 user), from uploads kept until used
(uploads.py), checked and extracted as they arrive where the agent may write (ahead.py).

It drives the release engine (agent.release) over the node links (agent.nodes); it may not
know gRPC or Prometheus.
"""

from .journal import FILE_NAME as JOURNAL_FILE
from .journal import Journal, JournalError, OperationRecord
from .runner import Operations, Progress
from .ahead import JournalPlaces
from .uploads import Upload, UploadStore

__all__ = ["JOURNAL_FILE", "Journal", "JournalError", "JournalPlaces", "OperationRecord",
           "Operations", "Progress", "Upload", "UploadStore"]
