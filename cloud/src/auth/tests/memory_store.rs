//! A small in-memory [`Store`] for the AS tests: the same contract as the SQLite store
//! (stable address assignment, removal records a revocation), none of the I/O.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::{Fqdn, NodeId};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::store::{Device, NewDevice, Revocations, Store, StoreError};

#[derive(Debug, Default)]
pub(super) struct InMemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    devices: BTreeMap<String, Device>,
    revoked: Vec<NodeId>,
    settings: HashMap<String, String>,
}

impl InMemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Store for InMemoryStore {
    async fn add_device(&self, device: NewDevice) -> Result<Device, StoreError> {
        let mut inner = self.lock();
        if inner.devices.contains_key(&device.device_id) {
            return Err(StoreError::DuplicateDevice(device.device_id));
        }
        if inner.devices.values().any(|d| d.fqdn == device.fqdn) {
            return Err(StoreError::DuplicateName(device.fqdn.as_str().to_owned()));
        }
        let stored = Device {
            device_id: device.device_id.clone(),
            node_id: device.node_id,
            fqdn: device.fqdn,
            password_hash: device.password_hash,
            vip4: None,
            vip6: None,
            created_at: device.created_at,
            last_login: None,
        };
        inner.devices.insert(device.device_id, stored.clone());
        Ok(stored)
    }

    async fn device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        Ok(self.lock().devices.get(device_id).cloned())
    }

    async fn device_by_node(&self, node_id: &NodeId) -> Result<Option<Device>, StoreError> {
        Ok(self
            .lock()
            .devices
            .values()
            .find(|d| d.node_id == *node_id)
            .cloned())
    }

    async fn device_by_fqdn(&self, fqdn: &Fqdn) -> Result<Option<Device>, StoreError> {
        Ok(self
            .lock()
            .devices
            .values()
            .find(|d| d.fqdn == *fqdn)
            .cloned())
    }

    async fn devices(&self) -> Result<Vec<Device>, StoreError> {
        Ok(self.lock().devices.values().cloned().collect())
    }

    async fn remove_device(&self, device_id: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match inner.devices.remove(device_id) {
            Some(device) => {
                inner.revoked.push(device.node_id);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn set_password_hash(&self, device_id: &str, hash: &str) -> Result<bool, StoreError> {
        match self.lock().devices.get_mut(device_id) {
            Some(device) => {
                device.password_hash = hash.to_owned();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn assign_addresses(
        &self,
        device_id: &str,
        ipv4_pool: Ipv4Net,
        ipv6_pool: Ipv6Net,
    ) -> Result<(Ipv4Addr, Ipv6Addr), StoreError> {
        let mut inner = self.lock();
        let used4: Vec<Ipv4Addr> = inner.devices.values().filter_map(|d| d.vip4).collect();
        let used6: Vec<Ipv6Addr> = inner.devices.values().filter_map(|d| d.vip6).collect();
        let device = inner
            .devices
            .get_mut(device_id)
            .ok_or_else(|| StoreError::NoSuchDevice(device_id.to_owned()))?;
        if let (Some(v4), Some(v6)) = (device.vip4, device.vip6) {
            return Ok((v4, v6));
        }
        let v4 = ipv4_pool
            .hosts()
            .find(|a| !used4.contains(a))
            .ok_or_else(|| StoreError::PoolExhausted(ipv4_pool.to_string()))?;
        let v6 = ipv6_pool
            .hosts()
            .skip(1)
            .find(|a| !used6.contains(a))
            .ok_or_else(|| StoreError::PoolExhausted(ipv6_pool.to_string()))?;
        device.vip4 = Some(v4);
        device.vip6 = Some(v6);
        Ok((v4, v6))
    }

    async fn record_login(&self, device_id: &str, at: UnixTime) -> Result<(), StoreError> {
        if let Some(device) = self.lock().devices.get_mut(device_id) {
            device.last_login = Some(at);
        }
        Ok(())
    }

    async fn revocations_since(&self, cursor: i64) -> Result<Revocations, StoreError> {
        let inner = self.lock();
        let start = usize::try_from(cursor)
            .unwrap_or(0)
            .min(inner.revoked.len());
        Ok(Revocations {
            cursor: i64::try_from(inner.revoked.len()).unwrap_or(i64::MAX),
            node_ids: inner.revoked[start..].to_vec(),
        })
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().settings.get(key).cloned())
    }

    async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, StoreError> {
        Ok(self
            .lock()
            .settings
            .entry(key.to_owned())
            .or_insert_with(|| value.to_owned())
            .clone())
    }
}
