"""What ``protocol`` offers (imported on first use, see ``__init__.py``): one import per submodule.

Each name is imported ``as`` itself: in a stub, that is what re-exports it."""

from ._blobs import (
    DEFAULT_CHUNK_SIZE as DEFAULT_CHUNK_SIZE,
    MIN_CHUNK_SIZE as MIN_CHUNK_SIZE,
    BlobAssembler as BlobAssembler,
    BlobStore as BlobStore,
    atomic_write as atomic_write,
    chunk_count as chunk_count,
    iter_chunks as iter_chunks,
)
from ._classes import (
    MAX_CLASSES as MAX_CLASSES,
    class_mapping as class_mapping,
    default_classes as default_classes,
    describe_classes as describe_classes,
    parse_classes as parse_classes,
    validate_classes as validate_classes,
)
from ._cli import exit_on_error as exit_on_error, new_app as new_app, uninstall_command as uninstall_command
from ._codec import CODECS as CODECS, Codec as Codec, decode_delta as decode_delta, encode_delta as encode_delta
from ._dp import clip_update as clip_update, noise_share as noise_share
from ._enrollment import (
    EnrollmentToken as EnrollmentToken,
    EnrollReply as EnrollReply,
    EnrollRequest as EnrollRequest,
    enroll_topic as enroll_topic,
)
from ._errors import (
    BrokerRefused as BrokerRefused,
    ConfigError as ConfigError,
    DataError as DataError,
    GenflError as GenflError,
    ModelError as ModelError,
    ProtocolError as ProtocolError,
    TransportError as TransportError,
)
from ._messages import (
    AUGMENTATIONS as AUGMENTATIONS,
    DEFAULT_ROUND_TIMEOUT_S as DEFAULT_ROUND_TIMEOUT_S,
    PROGRESS_EVERY_S as PROGRESS_EVERY_S,
    PROTOCOL_VERSION as PROTOCOL_VERSION,
    SYNTHETIC_NORMS as SYNTHETIC_NORMS,
    SYNTHETIC_RESTYLES as SYNTHETIC_RESTYLES,
    Ack as Ack,
    Augmentation as Augmentation,
    BlobChunk as BlobChunk,
    BlobRequest as BlobRequest,
    DeviceState as DeviceState,
    Failure as Failure,
    Message as Message,
    Progress as Progress,
    SyntheticNorm as SyntheticNorm,
    SyntheticRestyle as SyntheticRestyle,
    Task as Task,
    TrainConfig as TrainConfig,
    Update as Update,
    decode_message as decode_message,
    encode_message as encode_message,
)
from ._mqtt import (
    REFUSED_RETRY_S as REFUSED_RETRY_S,
    BrokerAddress as BrokerAddress,
    MqttTransport as MqttTransport,
    Will as Will,
    parse_brokers as parse_brokers,
    rotated as rotated,
)
from ._release import MAX_RELEASE_BYTES as MAX_RELEASE_BYTES, Release as Release
from ._secagg_messages import (
    MaskedUpdate as MaskedUpdate,
    SecAggForward as SecAggForward,
    SecAggKeys as SecAggKeys,
    SecAggRoster as SecAggRoster,
    SecAggShares as SecAggShares,
    SecAggUnmask as SecAggUnmask,
    UnmaskRequest as UnmaskRequest,
)
from ._settings import (
    options_from as options_from,
    overrides_from as overrides_from,
    setting as setting,
    settings_leaves as settings_leaves,
)
from ._signing import (
    FrameGuard as FrameGuard,
    OpenGuard as OpenGuard,
    SignedGuard as SignedGuard,
    generate_signing_key as generate_signing_key,
    load_signing_key as load_signing_key,
    public_key_from_text as public_key_from_text,
    public_key_text as public_key_text,
    save_signing_key as save_signing_key,
    sign_frame as sign_frame,
    verify_frame as verify_frame,
    write_secret as write_secret,
)
from ._synthetic import (
    MAX_PROBES as MAX_PROBES,
    SyntheticBatch as SyntheticBatch,
    decode_synthetic as decode_synthetic,
    encode_synthetic as encode_synthetic,
)
from ._systemd import (
    HARDENING as HARDENING,
    Notifier as Notifier,
    UnitInstall as UnitInstall,
    check_can_run as check_can_run,
    check_executable_reachable as check_executable_reachable,
    check_reachable as check_reachable,
    find_executable as find_executable,
    install_unit as install_unit,
    render_unit as render_unit,
    run_systemctl as run_systemctl,
    service_lifecycle as service_lifecycle,
    systemd_is_running as systemd_is_running,
    uninstall_unit as uninstall_unit,
    unit_head as unit_head,
)
from ._tensors import (
    TensorDict as TensorDict,
    blob_id as blob_id,
    decode_tensors as decode_tensors,
    encode_tensors as encode_tensors,
)
from ._topics import (
    DEVICE_CHANNELS as DEVICE_CHANNELS,
    ParsedTopic as ParsedTopic,
    Topics as Topics,
    validate_name as validate_name,
)
from ._transport import (
    InMemoryBus as InMemoryBus,
    InMemoryTransport as InMemoryTransport,
    MessageHandler as MessageHandler,
    Transport as Transport,
    topic_matches as topic_matches,
)
