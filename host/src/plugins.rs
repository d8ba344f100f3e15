//! The plugin host: loads the plugins the configuration names (by absolute path, ABI
//! checked, never unloaded) and adapts crypto-suite plugins to the protocol core's
//! [`SuiteProvider`] / [`AeadKey`].
//!
//! A missing file, a file that is no cyphonic plugin, a plugin of another ABI version
//! or of the wrong kind is an error naming the file, so the daemon refuses to start
//! with a message the operator can act on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cyphonic_plugin_abi::{
    CryptoKey, CryptoSuitePlugin, LoadError, MobilityPlugin, Plugin, PluginError, Status, VifPlugin,
};
use cyphonic_proto::suite::{AeadKey, KEY_LEN, NONCE_LEN, SuiteError, SuiteId, SuiteProvider};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum PluginHostError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{}: {source}", .path.display())]
    Plugin {
        path: PathBuf,
        #[source]
        source: PluginError,
    },
    #[error("{}: crypto plugin for suite id {id}, which this node does not know", .path.display())]
    UnknownSuite { path: PathBuf, id: u32 },
    #[error("{} and {} both provide suite {suite}", .first.display(), .second.display())]
    DuplicateSuite {
        suite: SuiteId,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("suite {0} is configured but no crypto plugin provides it")]
    SuiteWithoutPlugin(SuiteId),
}

/// What `cyphonic status` shows of a loaded plugin.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PluginInfo {
    pub kind: String,
    pub name: String,
    pub version: String,
    pub path: String,
}

/// Every plugin the node runs with.
#[derive(Debug, Clone)]
pub struct PluginSet {
    pub interface: VifPlugin,
    pub suites: Arc<PluginSuites>,
    pub mobility: Option<MobilityPlugin>,
}

impl PluginSet {
    /// Loads the interface plugin and the crypto plugins; `preference` orders the
    /// suites (empty: plugin order) and must only name suites some plugin provides.
    pub fn load(
        interface: &Path,
        crypto: &[PathBuf],
        mobility: Option<&Path>,
        preference: &[SuiteId],
    ) -> Result<Self, PluginHostError> {
        let mobility = mobility
            .map(|path| {
                MobilityPlugin::new(Plugin::load(path)?).map_err(|source| PluginHostError::Plugin {
                    path: path.to_path_buf(),
                    source,
                })
            })
            .transpose()?;
        let interface = load_vif(interface)?;
        let mut loaded: Vec<(SuiteId, CryptoSuitePlugin)> = Vec::new();
        for path in crypto {
            let plugin = CryptoSuitePlugin::new(Plugin::load(path)?).map_err(|source| {
                PluginHostError::Plugin {
                    path: path.clone(),
                    source,
                }
            })?;
            let id = plugin.info().suite_id;
            let suite = known_suite(id).ok_or_else(|| PluginHostError::UnknownSuite {
                path: path.clone(),
                id,
            })?;
            if let Some((_, first)) = loaded.iter().find(|(s, _)| *s == suite) {
                return Err(PluginHostError::DuplicateSuite {
                    suite,
                    first: first.plugin().path().to_path_buf(),
                    second: path.clone(),
                });
            }
            loaded.push((suite, plugin));
        }
        let suites = PluginSuites::new(loaded, preference)?;
        Ok(Self {
            interface,
            suites: Arc::new(suites),
            mobility,
        })
    }

    pub fn infos(&self) -> Vec<PluginInfo> {
        let mut infos = vec![info_of("interface", self.interface.plugin())];
        infos.extend(
            self.suites
                .plugins
                .iter()
                .map(|(_, p)| info_of("crypto", p.plugin())),
        );
        if let Some(m) = &self.mobility {
            infos.push(info_of("mobility", m.plugin()));
        }
        infos
    }
}

pub fn load_vif(path: &Path) -> Result<VifPlugin, PluginHostError> {
    VifPlugin::new(Plugin::load(path)?).map_err(|source| PluginHostError::Plugin {
        path: path.to_path_buf(),
        source,
    })
}

fn info_of(kind: &str, plugin: &Plugin) -> PluginInfo {
    PluginInfo {
        kind: kind.to_owned(),
        name: plugin.name().to_owned(),
        version: plugin.version().to_owned(),
        path: plugin.path().display().to_string(),
    }
}

fn known_suite(id: u32) -> Option<SuiteId> {
    let id = u16::try_from(id).ok()?;
    [
        SuiteId::AES_256_GCM,
        SuiteId::CHACHA20_POLY1305,
        SuiteId::AES_256_CTR_HMAC_SHA256,
    ]
    .into_iter()
    .find(|s| s.0 == id)
}

/// The crypto plugins as the tunnel's suite provider, in preference order.
#[derive(Debug)]
pub struct PluginSuites {
    plugins: Vec<(SuiteId, CryptoSuitePlugin)>,
}

impl PluginSuites {
    fn new(
        mut plugins: Vec<(SuiteId, CryptoSuitePlugin)>,
        preference: &[SuiteId],
    ) -> Result<Self, PluginHostError> {
        if let Some(missing) = preference
            .iter()
            .find(|s| !plugins.iter().any(|(p, _)| p == *s))
        {
            return Err(PluginHostError::SuiteWithoutPlugin(*missing));
        }
        if !preference.is_empty() {
            plugins.retain(|(s, _)| preference.contains(s));
            plugins.sort_by_key(|(s, _)| preference.iter().position(|p| p == s));
        }
        Ok(Self { plugins })
    }
}

impl SuiteProvider for PluginSuites {
    fn suites(&self) -> Vec<SuiteId> {
        self.plugins.iter().map(|(s, _)| *s).collect()
    }

    fn new_key(&self, suite: SuiteId, key: &[u8; KEY_LEN]) -> Result<Arc<dyn AeadKey>, SuiteError> {
        let (_, plugin) = self
            .plugins
            .iter()
            .find(|(s, _)| *s == suite)
            .ok_or(SuiteError::Unsupported(suite))?;
        let key = plugin.key_new(key).map_err(plugin_error)?;
        Ok(Arc::new(PluginKey { suite, key }))
    }
}

struct PluginKey {
    suite: SuiteId,
    key: CryptoKey,
}

impl std::fmt::Debug for PluginKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginKey")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl AeadKey for PluginKey {
    fn suite(&self) -> SuiteId {
        self.suite
    }

    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, SuiteError> {
        self.key
            .seal_in_place(nonce, aad, buf, plaintext_len)
            .map_err(plugin_error)
    }

    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, SuiteError> {
        self.key
            .open_in_place(nonce, aad, buf)
            .map_err(plugin_error)
    }
}

fn plugin_error(e: PluginError) -> SuiteError {
    match e.status() {
        Status::AUTH_FAILED => SuiteError::AuthenticationFailed,
        Status::BUFFER_TOO_SMALL => SuiteError::BufferTooSmall,
        _ => SuiteError::Plugin(e.to_string()),
    }
}
