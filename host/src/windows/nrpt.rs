//! Overlay DNS on Windows through the Name Resolution Policy Table (NRPT): one rule, under a
//! fixed cyphonic GUID, that makes the Windows DNS client send names under the overlay domain
//! (`.cyphonic`) to the node's resolver, leaving every other name to the normal resolvers.
//!
//! The rule is a registry key the DNS client service reads
//! (`HKLM\SYSTEM\CurrentControlSet\Services\Dnscache\Parameters\DnsPolicyConfig\{GUID}`, the
//! layout PowerShell's `Add-DnsClientNrptRule` writes). It survives a crash of the node, so the
//! node calls [`remove`] at start as well as at stop. When Group Policy defines NRPT rules
//! (`HKLM\SOFTWARE\Policies\Microsoft\Windows NT\DNSClient\DnsPolicyConfig` has subkeys) the DNS
//! client ignores the local table entirely: [`install`] reports and logs it, since the rule
//! then has no effect.
#![allow(unsafe_code)]

use std::io;
use std::net::IpAddr;
use std::ptr;

use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_FILE_NOT_FOUND, ERROR_MORE_DATA, FreeLibrary,
};
use windows_sys::Win32::System::LibraryLoader::{
    GetProcAddress, LOAD_LIBRARY_SEARCH_SYSTEM32, LoadLibraryExW,
};
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_LOCAL_MACHINE, KEY_QUERY_VALUE, KEY_READ, KEY_SET_VALUE, KEY_WOW64_64KEY, REG_DWORD,
    REG_MULTI_SZ, REG_OPTION_NON_VOLATILE, REG_SZ, REG_VALUE_TYPE, RegCloseKey, RegCreateKeyExW,
    RegDeleteTreeW, RegOpenKeyExW, RegQueryInfoKeyW, RegQueryValueExW, RegSetValueExW,
};

use super::security::to_wide;

/// The registry name of cyphonic's NRPT rule.
pub const RULE_GUID: &str = "{f5cbd4f2-b81a-4e3d-aad7-0f42f693fae5}";

/// Where the DNS client reads local NRPT rules (under HKLM).
pub const LOCAL_NRPT_KEY: &str =
    r"SYSTEM\CurrentControlSet\Services\Dnscache\Parameters\DnsPolicyConfig";

/// Where Group Policy puts NRPT rules (under HKLM); any subkey here hides the local table.
pub const POLICY_NRPT_KEY: &str =
    r"SOFTWARE\Policies\Microsoft\Windows NT\DNSClient\DnsPolicyConfig";

/// NRPT supports at most this many names per rule.
pub const MAX_DOMAINS: usize = 50;

/// `ConfigOptions` bit: "use the GenericDNSServers for these names".
const CONFIG_GENERIC_DNS: u32 = 0x8;
/// Rule layout version written by `Add-DnsClientNrptRule`.
const RULE_VERSION: u32 = 2;

/// One NRPT rule: names under `domains` are resolved by `servers`.
///
/// Domains are NRPT namespaces: `.cyphonic` matches every name under `cyphonic`. [`install`]
/// normalizes them (lowercase, one leading dot, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NrptRule {
    pub domains: Vec<String>,
    pub servers: Vec<IpAddr>,
}

/// What [`install`] did and found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NrptReport {
    /// The rule's key under HKLM.
    pub rule_key: String,
    /// The rule as written (normalized domains).
    pub rule: NrptRule,
    /// Whether the DNS client cache was flushed (false when `DnsFlushResolverCache` is missing
    /// or failed: stale negative answers then expire on their own).
    pub cache_flushed: bool,
    /// True when Group Policy NRPT rules exist, so the DNS client ignores this rule.
    pub group_policy_overrides: bool,
}

impl NrptReport {
    /// The warning to show when Group Policy hides the rule.
    pub fn group_policy_warning(&self) -> Option<String> {
        self.group_policy_overrides
            .then(|| group_policy_message(&self.rule))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NrptError {
    #[error("invalid NRPT rule: {0}")]
    InvalidRule(String),
    #[error(
        "access denied {action} HKLM\\{key}: the NRPT rule needs administrator rights; run \
         cyphonicd as the cyphonic service (LocalSystem) or from an elevated prompt"
    )]
    AccessDenied { action: &'static str, key: String },
    #[error("{action} HKLM\\{key}: {source}")]
    Registry {
        action: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("the NRPT rule at HKLM\\{key} is malformed: {reason}; remove it and restart cyphonicd")]
    Malformed { key: String, reason: String },
}

/// Writes cyphonic's rule (replacing any previous one), flushes the DNS client cache and checks
/// for Group Policy rules that would hide it.
pub fn install(rule: &NrptRule) -> Result<NrptReport, NrptError> {
    install_in(&Table::system(), rule)
}

/// Deletes cyphonic's rule. Idempotent: `Ok(false)` when there was none.
pub fn remove() -> Result<bool, NrptError> {
    remove_in(&Table::system())
}

/// True when Group Policy defines NRPT rules, in which case the DNS client ignores local rules
/// such as cyphonic's.
pub fn group_policy_overrides() -> Result<bool, NrptError> {
    policy_overrides_in(&Table::system())
}

/// cyphonic's rule as currently stored, if any.
pub fn installed_rule() -> Result<Option<NrptRule>, NrptError> {
    installed_rule_in(&Table::system())
}

/// Where a rule lives; tests point it at their own keys.
#[derive(Debug, Clone)]
struct Table {
    rule_key: String,
    policy_key: String,
}

impl Table {
    fn system() -> Self {
        Self {
            rule_key: format!(r"{LOCAL_NRPT_KEY}\{RULE_GUID}"),
            policy_key: POLICY_NRPT_KEY.to_owned(),
        }
    }
}

fn install_in(table: &Table, rule: &NrptRule) -> Result<NrptReport, NrptError> {
    let rule = normalize(rule)?;
    let key = &table.rule_key;
    // A fresh key: no value of an older layout lingers.
    remove_key(key)?;
    let hkey = RegKey::create(key)?;
    let servers = rule
        .servers
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    hkey.set_dword("Version", RULE_VERSION)?;
    hkey.set_multi_sz("Name", &rule.domains)?;
    hkey.set_sz("GenericDNSServers", &servers)?;
    hkey.set_dword("ConfigOptions", CONFIG_GENERIC_DNS)?;
    hkey.set_sz("IPSECCARestriction", "")?;
    drop(hkey);

    let cache_flushed = flush_dns_cache();
    let group_policy_overrides = policy_overrides_in(table)?;
    let report = NrptReport {
        rule_key: key.clone(),
        rule,
        cache_flushed,
        group_policy_overrides,
    };
    tracing::info!(
        domains = ?report.rule.domains,
        servers = %servers,
        cache_flushed,
        "NRPT rule installed at HKLM\\{key}"
    );
    if let Some(warning) = report.group_policy_warning() {
        tracing::warn!("{warning}");
    }
    Ok(report)
}

fn remove_in(table: &Table) -> Result<bool, NrptError> {
    let removed = remove_key(&table.rule_key)?;
    if removed {
        flush_dns_cache();
        tracing::info!("NRPT rule removed from HKLM\\{}", table.rule_key);
    }
    Ok(removed)
}

fn policy_overrides_in(table: &Table) -> Result<bool, NrptError> {
    let Some(key) = RegKey::open(&table.policy_key, KEY_READ)? else {
        return Ok(false);
    };
    let mut subkeys = 0u32;
    // SAFETY: `key.0` is an open key; only the subkey count is requested, every other
    // out-parameter is optional and null.
    let rc = unsafe {
        RegQueryInfoKeyW(
            key.0,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null(),
            &mut subkeys,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    check(rc, "querying", &table.policy_key)?;
    Ok(subkeys > 0)
}

fn installed_rule_in(table: &Table) -> Result<Option<NrptRule>, NrptError> {
    let key_name = &table.rule_key;
    let Some(key) = RegKey::open(key_name, KEY_QUERY_VALUE)? else {
        return Ok(None);
    };
    let malformed = |reason: String| NrptError::Malformed {
        key: key_name.clone(),
        reason,
    };
    let domains = match key.query("Name")? {
        Some((REG_MULTI_SZ, data)) => parse_multi_sz(&data),
        Some((ty, _)) => {
            return Err(malformed(format!(
                "Name has registry type {ty}, not REG_MULTI_SZ"
            )));
        }
        None => return Err(malformed("Name is missing".to_owned())),
    };
    let servers = match key.query("GenericDNSServers")? {
        Some((REG_SZ, data)) => parse_sz(&data),
        Some((ty, _)) => {
            return Err(malformed(format!(
                "GenericDNSServers has registry type {ty}, not REG_SZ"
            )));
        }
        None => return Err(malformed("GenericDNSServers is missing".to_owned())),
    };
    let servers = servers
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| malformed(format!("GenericDNSServers holds {s:?}, not an IP address")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(NrptRule { domains, servers }))
}

/// Validates a rule and puts its domains in NRPT form.
fn normalize(rule: &NrptRule) -> Result<NrptRule, NrptError> {
    if rule.domains.is_empty() {
        return Err(NrptError::InvalidRule("no domain".to_owned()));
    }
    if rule.domains.len() > MAX_DOMAINS {
        return Err(NrptError::InvalidRule(format!(
            "{} domains; NRPT takes at most {MAX_DOMAINS} per rule",
            rule.domains.len()
        )));
    }
    if rule.servers.is_empty() {
        return Err(NrptError::InvalidRule("no DNS server address".to_owned()));
    }
    let mut domains = Vec::with_capacity(rule.domains.len());
    for d in &rule.domains {
        let bare = d.trim().trim_matches('.').to_ascii_lowercase();
        let valid = !bare.is_empty()
            && bare.len() <= 253
            && bare.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(NrptError::InvalidRule(format!("{d:?} is not a DNS domain")));
        }
        let dotted = format!(".{bare}");
        if !domains.contains(&dotted) {
            domains.push(dotted);
        }
    }
    Ok(NrptRule {
        domains,
        servers: rule.servers.clone(),
    })
}

fn group_policy_message(rule: &NrptRule) -> String {
    let servers = rule
        .servers
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "Group Policy defines NRPT rules (HKLM\\{POLICY_NRPT_KEY} has subkeys), so the Windows \
         DNS client ignores local NRPT rules, including cyphonic's for {domains}: overlay names \
         will not resolve through the system resolver. Ask the domain administrator to add an \
         NRPT rule for {domains} with DNS servers {servers} (Group Policy: Computer \
         Configuration > Policies > Windows Settings > Name Resolution Policy), or query {servers} \
         directly",
        domains = rule.domains.join(", "),
    )
}

/// Flushes the DNS client cache so names cached as nonexistent before the rule resolve now.
/// `DnsFlushResolverCache` is exported by dnsapi.dll but undocumented, hence the dynamic
/// lookup; its absence is not an error.
fn flush_dns_cache() -> bool {
    type FlushFn = unsafe extern "system" fn() -> i32;
    let Ok(dll) = to_wide("dnsapi.dll") else {
        return false;
    };
    // SAFETY: `dll` is NUL-terminated; loading only from System32 rules out DLL planting.
    let module =
        unsafe { LoadLibraryExW(dll.as_ptr(), ptr::null_mut(), LOAD_LIBRARY_SEARCH_SYSTEM32) };
    if module.is_null() {
        tracing::debug!("dnsapi.dll not loadable: DNS cache not flushed");
        return false;
    }
    // SAFETY: `module` is loaded; the name is a NUL-terminated ASCII string.
    let proc = unsafe { GetProcAddress(module, c"DnsFlushResolverCache".as_ptr().cast()) };
    let flushed = match proc {
        Some(f) => {
            // SAFETY: DnsFlushResolverCache takes no arguments and returns a BOOL, with the
            // system calling convention; the pointer came from GetProcAddress on that name.
            let flush: FlushFn =
                unsafe { std::mem::transmute::<unsafe extern "system" fn() -> isize, FlushFn>(f) };
            // SAFETY: see above; `module` stays loaded until after the call.
            unsafe { flush() != 0 }
        }
        None => {
            tracing::debug!("dnsapi.dll has no DnsFlushResolverCache: DNS cache not flushed");
            false
        }
    };
    // SAFETY: `module` came from LoadLibraryExW above and no pointer into it is kept.
    unsafe { FreeLibrary(module) };
    flushed
}

/// Deletes a key and everything under it; `Ok(false)` when it did not exist.
fn remove_key(key: &str) -> Result<bool, NrptError> {
    let wide = to_wide(key).map_err(|e| registry_error("deleting", key, e))?;
    // SAFETY: HKEY_LOCAL_MACHINE is a predefined key; `wide` is NUL-terminated.
    let rc = unsafe { RegDeleteTreeW(HKEY_LOCAL_MACHINE, wide.as_ptr()) };
    if rc == ERROR_FILE_NOT_FOUND {
        return Ok(false);
    }
    check(rc, "deleting", key)?;
    Ok(true)
}

/// An open registry key under HKLM, closed on drop.
struct RegKey(HKEY);

impl RegKey {
    fn create(key: &str) -> Result<Self, NrptError> {
        let wide = to_wide(key).map_err(|e| registry_error("creating", key, e))?;
        let mut hkey: HKEY = ptr::null_mut();
        // SAFETY: `wide` is NUL-terminated; no class, default security; `hkey` receives the
        // opened key, owned by the returned value; the disposition is optional.
        let rc = unsafe {
            RegCreateKeyExW(
                HKEY_LOCAL_MACHINE,
                wide.as_ptr(),
                0,
                ptr::null(),
                REG_OPTION_NON_VOLATILE,
                KEY_SET_VALUE | KEY_QUERY_VALUE | KEY_WOW64_64KEY,
                ptr::null(),
                &mut hkey,
                ptr::null_mut(),
            )
        };
        check(rc, "creating", key)?;
        Ok(Self(hkey))
    }

    /// `None` when the key does not exist.
    fn open(key: &str, access: u32) -> Result<Option<Self>, NrptError> {
        let wide = to_wide(key).map_err(|e| registry_error("opening", key, e))?;
        let mut hkey: HKEY = ptr::null_mut();
        // SAFETY: `wide` is NUL-terminated; `hkey` receives the opened key.
        let rc = unsafe {
            RegOpenKeyExW(
                HKEY_LOCAL_MACHINE,
                wide.as_ptr(),
                0,
                access | KEY_WOW64_64KEY,
                &mut hkey,
            )
        };
        if rc == ERROR_FILE_NOT_FOUND {
            return Ok(None);
        }
        check(rc, "opening", key)?;
        Ok(Some(Self(hkey)))
    }

    fn set_dword(&self, name: &str, value: u32) -> Result<(), NrptError> {
        self.set(name, REG_DWORD, &value.to_le_bytes())
    }

    fn set_sz(&self, name: &str, value: &str) -> Result<(), NrptError> {
        let wide = to_wide(value).map_err(|e| registry_error("writing", name, e))?;
        self.set(name, REG_SZ, &utf16_bytes(&wide))
    }

    fn set_multi_sz(&self, name: &str, values: &[String]) -> Result<(), NrptError> {
        let mut wide = Vec::new();
        for v in values {
            wide.extend(to_wide(v).map_err(|e| registry_error("writing", name, e))?);
        }
        wide.push(0);
        self.set(name, REG_MULTI_SZ, &utf16_bytes(&wide))
    }

    fn set(&self, name: &str, ty: REG_VALUE_TYPE, data: &[u8]) -> Result<(), NrptError> {
        let wide = to_wide(name).map_err(|e| registry_error("writing", name, e))?;
        let len = u32::try_from(data.len()).map_err(|_| {
            registry_error(
                "writing",
                name,
                io::Error::new(io::ErrorKind::InvalidInput, "value too large"),
            )
        })?;
        // SAFETY: `self.0` is an open key with KEY_SET_VALUE; `wide` is NUL-terminated; `data`
        // is `len` readable bytes.
        let rc = unsafe { RegSetValueExW(self.0, wide.as_ptr(), 0, ty, data.as_ptr(), len) };
        check(rc, "writing value", name)
    }

    /// A value's type and raw bytes; `None` when the value does not exist.
    fn query(&self, name: &str) -> Result<Option<(REG_VALUE_TYPE, Vec<u8>)>, NrptError> {
        let wide = to_wide(name).map_err(|e| registry_error("reading", name, e))?;
        let mut buf = vec![0u8; 256];
        loop {
            let mut ty: REG_VALUE_TYPE = 0;
            let mut len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            // SAFETY: `self.0` is an open key with KEY_QUERY_VALUE; `buf` has `len` writable
            // bytes; the type and length out-parameters are valid locals.
            let rc = unsafe {
                RegQueryValueExW(
                    self.0,
                    wide.as_ptr(),
                    ptr::null(),
                    &mut ty,
                    buf.as_mut_ptr(),
                    &mut len,
                )
            };
            match rc {
                ERROR_FILE_NOT_FOUND => return Ok(None),
                ERROR_MORE_DATA => buf.resize(len as usize, 0),
                _ => {
                    check(rc, "reading value", name)?;
                    buf.truncate(len as usize);
                    return Ok(Some((ty, buf)));
                }
            }
        }
    }
}

impl Drop for RegKey {
    fn drop(&mut self) {
        // SAFETY: `self.0` is an open key owned by this value.
        unsafe { RegCloseKey(self.0) };
    }
}

fn check(rc: u32, action: &'static str, key: &str) -> Result<(), NrptError> {
    match rc {
        0 => Ok(()),
        ERROR_ACCESS_DENIED => Err(NrptError::AccessDenied {
            action,
            key: key.to_owned(),
        }),
        _ => Err(registry_error(
            action,
            key,
            io::Error::from_raw_os_error(rc as i32),
        )),
    }
}

fn registry_error(action: &'static str, key: &str, source: io::Error) -> NrptError {
    NrptError::Registry {
        action,
        key: key.to_owned(),
        source,
    }
}

fn utf16_bytes(wide: &[u16]) -> Vec<u8> {
    wide.iter().flat_map(|u| u.to_le_bytes()).collect()
}

fn utf16_units(data: &[u8]) -> Vec<u16> {
    data.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// A REG_SZ's string (up to the first NUL; the terminator may be missing).
fn parse_sz(data: &[u8]) -> String {
    let units = utf16_units(data);
    let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
    String::from_utf16_lossy(&units[..end])
}

/// A REG_MULTI_SZ's strings (empty strings end the list).
fn parse_multi_sz(data: &[u8]) -> Vec<String> {
    utf16_units(data)
        .split(|&u| u == 0)
        .take_while(|s| !s.is_empty())
        .map(String::from_utf16_lossy)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table at a test GUID, with a policy key nobody creates: tests never touch a real rule.
    fn test_table(guid: &str) -> Table {
        Table {
            rule_key: format!(r"{LOCAL_NRPT_KEY}\{{{guid}}}"),
            policy_key: format!(r"SOFTWARE\cyphonic-test\{guid}\DnsPolicyConfig"),
        }
    }

    fn rule() -> NrptRule {
        NrptRule {
            domains: vec![".cyphonic".to_owned()],
            servers: vec!["100.64.0.1".parse().unwrap(), "fd00::53".parse().unwrap()],
        }
    }

    #[test]
    fn install_read_back_remove() {
        let table = test_table("2533d4df-9b1d-4b31-9e59-694d1ee440fc");
        let _ = remove_in(&table);
        assert_eq!(installed_rule_in(&table).unwrap(), None);

        let report = install_in(&table, &rule()).unwrap();
        // Windows and Wine 8 (a stub returning TRUE) both export DnsFlushResolverCache.
        assert!(report.cache_flushed);
        assert_eq!(report.rule, rule());
        assert_eq!(report.rule_key, table.rule_key);
        assert!(!report.group_policy_overrides);
        assert_eq!(report.group_policy_warning(), None);
        assert_eq!(installed_rule_in(&table).unwrap(), Some(rule()));

        // The exact registry types and bytes the DNS client expects.
        let key = RegKey::open(&table.rule_key, KEY_QUERY_VALUE)
            .unwrap()
            .unwrap();
        assert_eq!(
            key.query("Version").unwrap(),
            Some((REG_DWORD, 2u32.to_le_bytes().to_vec()))
        );
        assert_eq!(
            key.query("ConfigOptions").unwrap(),
            Some((REG_DWORD, 8u32.to_le_bytes().to_vec()))
        );
        let (ty, data) = key.query("GenericDNSServers").unwrap().unwrap();
        assert_eq!(
            (ty, parse_sz(&data).as_str()),
            (REG_SZ, "100.64.0.1; fd00::53")
        );
        let (ty, data) = key.query("Name").unwrap().unwrap();
        assert_eq!(ty, REG_MULTI_SZ);
        assert_eq!(
            data,
            utf16_bytes(&[&to_wide(".cyphonic").unwrap()[..], &[0]].concat())
        );
        let (ty, data) = key.query("IPSECCARestriction").unwrap().unwrap();
        assert_eq!((ty, parse_sz(&data).as_str()), (REG_SZ, ""));
        drop(key);

        // Reinstalling replaces the rule.
        let other = NrptRule {
            domains: vec!["Corp.Example.".to_owned(), "cyphonic".to_owned()],
            servers: vec!["100.64.0.2".parse().unwrap()],
        };
        let report = install_in(&table, &other).unwrap();
        assert_eq!(report.rule.domains, [".corp.example", ".cyphonic"]);
        assert_eq!(installed_rule_in(&table).unwrap(), Some(report.rule));

        assert!(remove_in(&table).unwrap());
        assert_eq!(installed_rule_in(&table).unwrap(), None);
        assert!(!remove_in(&table).unwrap());
    }

    #[test]
    fn wrong_value_type_is_malformed() {
        let table = test_table("b7b069e2-2829-4c68-9071-c476dd0da08a");
        let _ = remove_in(&table);
        install_in(&table, &rule()).unwrap();
        let key = RegKey::create(&table.rule_key).unwrap();
        key.set_sz("Name", ".cyphonic").unwrap();
        drop(key);
        let err = installed_rule_in(&table).unwrap_err();
        assert!(matches!(err, NrptError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("REG_MULTI_SZ"), "{err}");
        assert!(remove_in(&table).unwrap());
    }

    #[test]
    fn group_policy_detection() {
        // The real policy key (the test's Wine prefix has none by default).
        let table = Table {
            rule_key: test_table("0d6e4a54-4f1e-4f43-9a59-5b1f0b8f3c11").rule_key,
            policy_key: POLICY_NRPT_KEY.to_owned(),
        };
        let existed = RegKey::open(POLICY_NRPT_KEY, KEY_READ).unwrap().is_some();
        assert!(
            !existed,
            "this machine has Group Policy NRPT rules; test needs a clean prefix"
        );
        assert!(!policy_overrides_in(&table).unwrap());
        assert!(!group_policy_overrides().unwrap());

        // An empty DnsPolicyConfig key does not override; a rule under it does.
        drop(RegKey::create(POLICY_NRPT_KEY).unwrap());
        assert!(!policy_overrides_in(&table).unwrap());
        let gp_rule = format!(r"{POLICY_NRPT_KEY}\{{0d6e4a54-4f1e-4f43-9a59-5b1f0b8f3c11}}");
        drop(RegKey::create(&gp_rule).unwrap());
        let result = (|| {
            assert!(policy_overrides_in(&table)?);
            let report = install_in(&table, &rule())?;
            remove_in(&table)?;
            Ok::<_, NrptError>(report)
        })();
        assert!(remove_key(POLICY_NRPT_KEY).unwrap());
        let report = result.unwrap();
        assert!(report.group_policy_overrides);
        let warning = report.group_policy_warning().unwrap();
        assert!(warning.contains("ignores local NRPT rules"), "{warning}");
        assert!(warning.contains(".cyphonic"), "{warning}");
        assert!(warning.contains("100.64.0.1"), "{warning}");
        assert!(!policy_overrides_in(&table).unwrap());
    }

    #[test]
    fn invalid_rules_are_rejected() {
        let table = test_table("5d7c7b0e-3c1a-4d9b-8e5f-2a6b9c0d1e2f");
        let bad = |domains: &[&str], servers: &[&str]| NrptRule {
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            servers: servers.iter().map(|s| s.parse().unwrap()).collect(),
        };
        for rule in [
            bad(&[], &["100.64.0.1"]),
            bad(&[".cyphonic"], &[]),
            bad(&["."], &["100.64.0.1"]),
            bad(&["a b"], &["100.64.0.1"]),
            bad(&["x;y"], &["100.64.0.1"]),
            bad(&["a..b"], &["100.64.0.1"]),
        ] {
            let err = install_in(&table, &rule).unwrap_err();
            assert!(matches!(err, NrptError::InvalidRule(_)), "{rule:?}: {err}");
        }
        let many: Vec<String> = (0..=MAX_DOMAINS).map(|i| format!("d{i}")).collect();
        let rule = NrptRule {
            domains: many,
            servers: vec!["100.64.0.1".parse().unwrap()],
        };
        assert!(matches!(
            install_in(&table, &rule),
            Err(NrptError::InvalidRule(_))
        ));
        assert_eq!(installed_rule_in(&table).unwrap(), None);
    }

    #[test]
    fn multi_sz_parsing() {
        let data = utf16_bytes(
            &[
                &to_wide(".a").unwrap()[..],
                &to_wide(".b").unwrap()[..],
                &[0],
            ]
            .concat(),
        );
        assert_eq!(parse_multi_sz(&data), [".a", ".b"]);
        assert!(parse_multi_sz(&[0, 0]).is_empty());
        assert_eq!(parse_sz(&utf16_bytes(&to_wide("x").unwrap())), "x");
        assert_eq!(parse_sz(&utf16_bytes(&[u16::from(b'y')])), "y");
    }
}
