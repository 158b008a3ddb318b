"""Edge Agent: processing modules on local sensor streams, a durable SQLite outbox, and sync.

Module and source writers need only what is exported here; see ``agent.api`` for the runtime's promises.
"""

from agent.api import Context, Counters, Module, ModuleConfig, Record, Source, SourceConfig, SourceContext
from agent.errors import ConfigError, EdgeAgentError, ModuleError, ModuleLoadError, OutboxError
from agent.units import Duration, PositiveDuration, Size

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Context",
    "Counters",
    "Duration",
    "EdgeAgentError",
    "Module",
    "ModuleConfig",
    "ModuleError",
    "ModuleLoadError",
    "OutboxError",
    "PositiveDuration",
    "Record",
    "Size",
    "Source",
    "SourceConfig",
    "SourceContext",
    "__version__",
]
