//! Everything a configuration must pass before a node runs with it, shared by the
//! daemon (start and every reload) and `cyphonic check-config`: the config-logic
//! script, the DNS filter compiled in a scratch sandbox with its self-check, and the
//! plugin files loaded with the right ABI. Blocking: async callers run it on a
//! blocking thread.

use std::path::PathBuf;

use crate::config::NodeConfig;
use crate::config_logic::{self, ConfigLogicError, HostFacts};
use crate::lua::{Limits, Sandbox, Script, ScriptError};
use crate::plugins::{PluginHostError, PluginSet};

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    ConfigLogic(#[from] ConfigLogicError),
    #[error(transparent)]
    Script(#[from] ScriptError),
    #[error("{}: defines no function `filter`", .0.display())]
    NoFilter(PathBuf),
    #[error("tunnel.suites: {0}")]
    Suites(String),
    #[error(transparent)]
    Plugins(#[from] PluginHostError),
}

/// Runs the config-logic script, if the configuration names one, on a fresh sandbox;
/// returns the configuration it derived and the keys it changed.
pub fn config_logic(config: NodeConfig) -> Result<(NodeConfig, Vec<String>), ValidateError> {
    let Some(path) = config.config_script.clone() else {
        return Ok((config, Vec::new()));
    };
    let script = Script::from_file(&path)?;
    let facts = HostFacts::gather();
    Ok(config_logic::apply(
        &script,
        lua_limits(&config),
        &config,
        &facts,
    )?)
}

/// Compiles the DNS filter in a scratch sandbox and runs its self-check.
pub fn filter(config: &NodeConfig) -> Result<(), ValidateError> {
    let script = Script::from_file(&config.resolver.filter)?;
    let mut sandbox = Sandbox::with_script(lua_limits(config), &script)?;
    if !sandbox.has_function("filter") {
        return Err(ValidateError::NoFilter(config.resolver.filter.clone()));
    }
    sandbox.self_check()?;
    Ok(())
}

/// Loads every plugin file the configuration names.
pub fn plugins(config: &NodeConfig) -> Result<PluginSet, ValidateError> {
    let suites = config.suite_ids().map_err(ValidateError::Suites)?;
    Ok(PluginSet::load(
        &config.plugins.interface,
        &config.plugins.crypto,
        config.plugins.mobility.as_deref(),
        &suites,
    )?)
}

pub fn lua_limits(config: &NodeConfig) -> Limits {
    Limits {
        memory_bytes: config.resolver.lua_memory_bytes,
        instructions: config.resolver.lua_instruction_budget,
    }
}
