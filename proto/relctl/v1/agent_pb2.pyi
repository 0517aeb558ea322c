import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReleaseStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RELEASE_STATUS_UNSPECIFIED: _ClassVar[ReleaseStatus]
    RELEASE_STATUS_PERMANENT: _ClassVar[ReleaseStatus]
    RELEASE_STATUS_CURRENT: _ClassVar[ReleaseStatus]
    RELEASE_STATUS_OLD: _ClassVar[ReleaseStatus]
    RELEASE_STATUS_UNPACKED: _ClassVar[ReleaseStatus]

class OperationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_KIND_UNSPECIFIED: _ClassVar[OperationKind]
    OPERATION_KIND_UPLOAD: _ClassVar[OperationKind]
    OPERATION_KIND_UNPACK: _ClassVar[OperationKind]
    OPERATION_KIND_CHECK_INSTALL: _ClassVar[OperationKind]
    OPERATION_KIND_INSTALL: _ClassVar[OperationKind]
    OPERATION_KIND_MAKE_PERMANENT: _ClassVar[OperationKind]
    OPERATION_KIND_REMOVE: _ClassVar[OperationKind]
    OPERATION_KIND_UPGRADE: _ClassVar[OperationKind]
    OPERATION_KIND_DOWNGRADE: _ClassVar[OperationKind]
    OPERATION_KIND_RELOAD_CONFIG: _ClassVar[OperationKind]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_RUNNING: _ClassVar[Outcome]
    OUTCOME_SUCCEEDED: _ClassVar[Outcome]
    OUTCOME_FAILED_UNCHANGED: _ClassVar[Outcome]
    OUTCOME_ROLLED_BACK: _ClassVar[Outcome]
    OUTCOME_FAILED: _ClassVar[Outcome]
    OUTCOME_INTERRUPTED: _ClassVar[Outcome]
    OUTCOME_DRY_RUN: _ClassVar[Outcome]
    OUTCOME_UP_TO_DATE: _ClassVar[Outcome]

class StepState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_STATE_UNSPECIFIED: _ClassVar[StepState]
    STEP_STATE_RUNNING: _ClassVar[StepState]
    STEP_STATE_SUCCEEDED: _ClassVar[StepState]
    STEP_STATE_FAILED: _ClassVar[StepState]
    STEP_STATE_SKIPPED: _ClassVar[StepState]

class ConfigChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFIG_CHANGE_KIND_UNSPECIFIED: _ClassVar[ConfigChangeKind]
    CONFIG_CHANGE_KIND_ADDED: _ClassVar[ConfigChangeKind]
    CONFIG_CHANGE_KIND_CHANGED: _ClassVar[ConfigChangeKind]
    CONFIG_CHANGE_KIND_REMOVED: _ClassVar[ConfigChangeKind]
RELEASE_STATUS_UNSPECIFIED: ReleaseStatus
RELEASE_STATUS_PERMANENT: ReleaseStatus
RELEASE_STATUS_CURRENT: ReleaseStatus
RELEASE_STATUS_OLD: ReleaseStatus
RELEASE_STATUS_UNPACKED: ReleaseStatus
OPERATION_KIND_UNSPECIFIED: OperationKind
OPERATION_KIND_UPLOAD: OperationKind
OPERATION_KIND_UNPACK: OperationKind
OPERATION_KIND_CHECK_INSTALL: OperationKind
OPERATION_KIND_INSTALL: OperationKind
OPERATION_KIND_MAKE_PERMANENT: OperationKind
OPERATION_KIND_REMOVE: OperationKind
OPERATION_KIND_UPGRADE: OperationKind
OPERATION_KIND_DOWNGRADE: OperationKind
OPERATION_KIND_RELOAD_CONFIG: OperationKind
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_RUNNING: Outcome
OUTCOME_SUCCEEDED: Outcome
OUTCOME_FAILED_UNCHANGED: Outcome
OUTCOME_ROLLED_BACK: Outcome
OUTCOME_FAILED: Outcome
OUTCOME_INTERRUPTED: Outcome
OUTCOME_DRY_RUN: Outcome
OUTCOME_UP_TO_DATE: Outcome
STEP_STATE_UNSPECIFIED: StepState
STEP_STATE_RUNNING: StepState
STEP_STATE_SUCCEEDED: StepState
STEP_STATE_FAILED: StepState
STEP_STATE_SKIPPED: StepState
CONFIG_CHANGE_KIND_UNSPECIFIED: ConfigChangeKind
CONFIG_CHANGE_KIND_ADDED: ConfigChangeKind
CONFIG_CHANGE_KIND_CHANGED: ConfigChangeKind
CONFIG_CHANGE_KIND_REMOVED: ConfigChangeKind

class Release(_message.Message):
    __slots__ = ("name", "version", "status", "running", "applications", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    APPLICATIONS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    status: ReleaseStatus
    running: bool
    applications: _containers.RepeatedScalarFieldContainer[str]
    sha256: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., status: _Optional[_Union[ReleaseStatus, str]] = ..., running: _Optional[bool] = ..., applications: _Optional[_Iterable[str]] = ..., sha256: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node", "up", "error", "since", "refreshed_at", "releases")
    NODE_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    REFRESHED_AT_FIELD_NUMBER: _ClassVar[int]
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    node: str
    up: bool
    error: str
    since: _timestamp_pb2.Timestamp
    refreshed_at: _timestamp_pb2.Timestamp
    releases: _containers.RepeatedCompositeFieldContainer[Release]
    def __init__(self, node: _Optional[str] = ..., up: _Optional[bool] = ..., error: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., refreshed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., releases: _Optional[_Iterable[_Union[Release, _Mapping]]] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("version", "hostname")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    version: str
    hostname: str
    def __init__(self, version: _Optional[str] = ..., hostname: _Optional[str] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class NodePing(_message.Message):
    __slots__ = ("node", "up", "round_trip", "error")
    NODE_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    ROUND_TRIP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node: str
    up: bool
    round_trip: _duration_pb2.Duration
    error: str
    def __init__(self, node: _Optional[str] = ..., up: _Optional[bool] = ..., round_trip: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("agent", "nodes")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    agent: AgentInfo
    nodes: _containers.RepeatedCompositeFieldContainer[NodePing]
    def __init__(self, agent: _Optional[_Union[AgentInfo, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[NodePing, _Mapping]]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("agent", "nodes")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    agent: AgentInfo
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    def __init__(self, agent: _Optional[_Union[AgentInfo, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ...) -> None: ...

class GetReleasesRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class GetReleasesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class ModuleMismatch(_message.Message):
    __slots__ = ("application", "module", "problem", "detail")
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    application: str
    module: str
    problem: str
    detail: str
    def __init__(self, application: _Optional[str] = ..., module: _Optional[str] = ..., problem: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("node", "release", "version", "mode", "applications", "modules", "mismatch_count", "mismatches")
    NODE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    APPLICATIONS_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    MISMATCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    node: str
    release: str
    version: str
    mode: str
    applications: int
    modules: int
    mismatch_count: int
    mismatches: _containers.RepeatedCompositeFieldContainer[ModuleMismatch]
    def __init__(self, node: _Optional[str] = ..., release: _Optional[str] = ..., version: _Optional[str] = ..., mode: _Optional[str] = ..., applications: _Optional[int] = ..., modules: _Optional[int] = ..., mismatch_count: _Optional[int] = ..., mismatches: _Optional[_Iterable[_Union[ModuleMismatch, _Mapping]]] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("name", "state", "started_at", "duration", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: StepState
    started_at: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    detail: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[StepState, str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., detail: _Optional[str] = ...) -> None: ...

class ConfigChange(_message.Message):
    __slots__ = ("application", "key", "kind", "old_value", "new_value")
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    application: str
    key: str
    kind: ConfigChangeKind
    old_value: str
    new_value: str
    def __init__(self, application: _Optional[str] = ..., key: _Optional[str] = ..., kind: _Optional[_Union[ConfigChangeKind, str]] = ..., old_value: _Optional[str] = ..., new_value: _Optional[str] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("id", "node", "kind", "from_version", "to_version", "requested_by", "started_at", "finished_at", "outcome", "error", "steps", "releases_after", "config_changes")
    ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    RELEASES_AFTER_FIELD_NUMBER: _ClassVar[int]
    CONFIG_CHANGES_FIELD_NUMBER: _ClassVar[int]
    id: int
    node: str
    kind: OperationKind
    from_version: str
    to_version: str
    requested_by: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    outcome: Outcome
    error: str
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    releases_after: _containers.RepeatedCompositeFieldContainer[Release]
    config_changes: _containers.RepeatedCompositeFieldContainer[ConfigChange]
    def __init__(self, id: _Optional[int] = ..., node: _Optional[str] = ..., kind: _Optional[_Union[OperationKind, str]] = ..., from_version: _Optional[str] = ..., to_version: _Optional[str] = ..., requested_by: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., error: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ..., releases_after: _Optional[_Iterable[_Union[Release, _Mapping]]] = ..., config_changes: _Optional[_Iterable[_Union[ConfigChange, _Mapping]]] = ...) -> None: ...

class OperationResult(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: Operation
    def __init__(self, operation: _Optional[_Union[Operation, _Mapping]] = ...) -> None: ...

class ProgressEvent(_message.Message):
    __slots__ = ("operation_id", "step", "upload", "log", "finished")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    operation_id: int
    step: Step
    upload: UploadProgress
    log: str
    finished: Operation
    def __init__(self, operation_id: _Optional[int] = ..., step: _Optional[_Union[Step, _Mapping]] = ..., upload: _Optional[_Union[UploadProgress, _Mapping]] = ..., log: _Optional[str] = ..., finished: _Optional[_Union[Operation, _Mapping]] = ...) -> None: ...

class UploadProgress(_message.Message):
    __slots__ = ("received_bytes", "total_bytes")
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    received_bytes: int
    total_bytes: int
    def __init__(self, received_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class ListOperationsRequest(_message.Message):
    __slots__ = ("node", "limit", "before_id")
    NODE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_ID_FIELD_NUMBER: _ClassVar[int]
    node: str
    limit: int
    before_id: int
    def __init__(self, node: _Optional[str] = ..., limit: _Optional[int] = ..., before_id: _Optional[int] = ...) -> None: ...

class ListOperationsResponse(_message.Message):
    __slots__ = ("operations",)
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[Operation]
    def __init__(self, operations: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ...) -> None: ...

class GetOperationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("node", "version", "size", "sha256", "file_name")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: str
    size: int
    sha256: str
    file_name: str
    def __init__(self, node: _Optional[str] = ..., version: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., file_name: _Optional[str] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("upload_id", "size", "sha256", "release_name", "version")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    RELEASE_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    size: int
    sha256: str
    release_name: str
    version: str
    def __init__(self, upload_id: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., release_name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class UnpackRequest(_message.Message):
    __slots__ = ("node", "version", "upload_id", "replace")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: str
    upload_id: str
    replace: bool
    def __init__(self, node: _Optional[str] = ..., version: _Optional[str] = ..., upload_id: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class CheckInstallRequest(_message.Message):
    __slots__ = ("node", "version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: str
    def __init__(self, node: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class InstallRequest(_message.Message):
    __slots__ = ("node", "version", "install_timeout")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTALL_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: str
    install_timeout: _duration_pb2.Duration
    def __init__(self, node: _Optional[str] = ..., version: _Optional[str] = ..., install_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class MakePermanentRequest(_message.Message):
    __slots__ = ("node", "version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: str
    def __init__(self, node: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class RemoveRequest(_message.Message):
    __slots__ = ("node", "version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: str
    def __init__(self, node: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class UpgradeRequest(_message.Message):
    __slots__ = ("node", "version", "upload_id", "no_permanent", "dry_run", "health_soak", "install_timeout", "allow_config_reset", "replace", "allow_purge_kill")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    NO_PERMANENT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    HEALTH_SOAK_FIELD_NUMBER: _ClassVar[int]
    INSTALL_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_CONFIG_RESET_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PURGE_KILL_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: str
    upload_id: str
    no_permanent: bool
    dry_run: bool
    health_soak: _duration_pb2.Duration
    install_timeout: _duration_pb2.Duration
    allow_config_reset: bool
    replace: bool
    allow_purge_kill: bool
    def __init__(self, node: _Optional[str] = ..., version: _Optional[str] = ..., upload_id: _Optional[str] = ..., no_permanent: _Optional[bool] = ..., dry_run: _Optional[bool] = ..., health_soak: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., install_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., allow_config_reset: _Optional[bool] = ..., replace: _Optional[bool] = ..., allow_purge_kill: _Optional[bool] = ...) -> None: ...

class DowngradeRequest(_message.Message):
    __slots__ = ("node", "version", "no_permanent", "install_timeout", "dry_run", "allow_config_reset", "allow_purge_kill")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NO_PERMANENT_FIELD_NUMBER: _ClassVar[int]
    INSTALL_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ALLOW_CONFIG_RESET_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PURGE_KILL_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: str
    no_permanent: bool
    install_timeout: _duration_pb2.Duration
    dry_run: bool
    allow_config_reset: bool
    allow_purge_kill: bool
    def __init__(self, node: _Optional[str] = ..., version: _Optional[str] = ..., no_permanent: _Optional[bool] = ..., install_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., dry_run: _Optional[bool] = ..., allow_config_reset: _Optional[bool] = ..., allow_purge_kill: _Optional[bool] = ...) -> None: ...

class ReloadConfigRequest(_message.Message):
    __slots__ = ("node", "dry_run", "show_values")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    SHOW_VALUES_FIELD_NUMBER: _ClassVar[int]
    node: str
    dry_run: bool
    show_values: bool
    def __init__(self, node: _Optional[str] = ..., dry_run: _Optional[bool] = ..., show_values: _Optional[bool] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("limit", "node")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    limit: int
    node: str
    def __init__(self, limit: _Optional[int] = ..., node: _Optional[str] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("time", "peer", "identity", "certificate", "rpc", "node", "arguments", "result", "detail", "operation_id")
    TIME_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    peer: str
    identity: str
    certificate: str
    rpc: str
    node: str
    arguments: str
    result: str
    detail: str
    operation_id: int
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., peer: _Optional[str] = ..., identity: _Optional[str] = ..., certificate: _Optional[str] = ..., rpc: _Optional[str] = ..., node: _Optional[str] = ..., arguments: _Optional[str] = ..., result: _Optional[str] = ..., detail: _Optional[str] = ..., operation_id: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...
