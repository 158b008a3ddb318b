"""The agent config: TOML, environment overrides, and validation in two stages.

Stage one checks the agent's own sections against ``AgentConfig``; stage two checks each
module's ``with`` table against that module's own ``Config``. Both stages always run, so
``edge-agent check`` reports every problem of a file at once.

Files: ``base`` (strict sections, broker logins), ``sources`` (the built-in sources'
sections), ``sections`` (the rest, and ``AgentConfig``), ``loading`` (TOML, environment overrides,
the two stages).
"""

from agent.config.base import (
    BrokerLogin,
    DeviceId,
    MqttUrl,
    Resolver,
    SourceResolver,
    TopicFilter,
)
from agent.config.loading import (
    ENV_PREFIX,
    load_config,
    parse_config_text,
    validate_config,
)
from agent.config.sections import (
    AgentConfig,
    BufferConfig,
    CloudConfig,
    LoadedConfig,
    MetricsConfig,
    ModulePlan,
    ModuleSpec,
    RemoteSettings,
    SupervisorConfig,
)
from agent.config.sources import (
    MqttSourceConfig,
    SimulatorSourceConfig,
    SourceEntry,
    source_class,
)

__all__ = [
    "ENV_PREFIX",
    "AgentConfig",
    "BrokerLogin",
    "BufferConfig",
    "CloudConfig",
    "DeviceId",
    "LoadedConfig",
    "MetricsConfig",
    "ModulePlan",
    "ModuleSpec",
    "MqttSourceConfig",
    "MqttUrl",
    "RemoteSettings",
    "Resolver",
    "SimulatorSourceConfig",
    "SourceEntry",
    "SourceResolver",
    "SupervisorConfig",
    "TopicFilter",
    "load_config",
    "parse_config_text",
    "source_class",
    "validate_config",
]
