//! Marking the adapter's network Private through the Network List Manager (COM
//! `INetworkListManager`), so the firewall applies its Private profile rather than the
//! Public one that blocks inbound overlay traffic.
//!
//! Windows identifies the network a few seconds after the adapter comes up, so a
//! background thread retries for [`RETRY_FOR`]. Failure is logged, never fatal: Group
//! Policy may forbid the change, and the operator can still set it by hand.

use std::marker::PhantomData;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use windows::Win32::Foundation::RPC_E_CHANGED_MODE;
use windows::Win32::Networking::NetworkListManager::{
    INetworkListManager, NLM_NETWORK_CATEGORY_PRIVATE, NLM_NETWORK_CATEGORY_PUBLIC,
    NetworkListManager,
};
use windows::Win32::System::Com::{
    CLSCTX_ALL, COINIT_MULTITHREADED, CoCreateInstance, CoInitializeEx, CoUninitialize,
};
use windows::core::GUID;

use crate::guid::format_guid;

/// How long the background thread keeps looking for the adapter's network.
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(30);
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The background marker; dropping it stops the thread (at its next retry).
#[derive(Debug)]
pub(crate) struct PrivateMarker {
    _stop: Sender<()>,
}

/// Starts marking the network of the adapter `guid` Private, in the background.
pub(crate) fn spawn_mark_private(guid: u128, name: String) -> Option<PrivateMarker> {
    let (stop, stopped) = mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("wintun-network-category".into())
        .spawn(move || {
            let _com = match ComThread::init() {
                Ok(com) => com,
                Err(e) => {
                    tracing::warn!(name, error = %e, "wintun: COM unavailable; network category left as Windows set it");
                    return;
                }
            };
            let deadline = Instant::now() + RETRY_FOR;
            loop {
                match mark_private(guid) {
                    Ok(Outcome::Marked) => {
                        tracing::debug!(name, "wintun: network marked Private");
                        return;
                    }
                    Ok(Outcome::NotPublic) => return,
                    Ok(Outcome::NoNetworkYet) => {}
                    Err(e) => tracing::debug!(name, error = %e, "wintun: setting the network category"),
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        name,
                        guid = format_guid(guid),
                        "wintun: could not mark the adapter's network Private within {}s \
                         (set it in Settings > Network, or with Set-NetConnectionProfile)",
                        RETRY_FOR.as_secs()
                    );
                    return;
                }
                match stopped.recv_timeout(RETRY_EVERY) {
                    Err(RecvTimeoutError::Timeout) => {}
                    // The interface closed.
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        });
    match spawned {
        Ok(_) => Some(PrivateMarker { _stop: stop }),
        Err(e) => {
            tracing::warn!(error = %e, "wintun: cannot start the network-category thread");
            None
        }
    }
}

/// What one attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The network was Public and is now Private.
    Marked,
    /// Already Private or domain-authenticated: nothing to do.
    NotPublic,
    /// No connection of that adapter is known (yet).
    NoNetworkYet,
}

/// One attempt, on a thread where COM is initialised.
pub(crate) fn mark_private(adapter: u128) -> windows::core::Result<Outcome> {
    let adapter = GUID::from_u128(adapter);
    // SAFETY: plain COM calls on interfaces this function owns; COM is initialised on
    // this thread (caller's contract, checked by `ComThread`'s existence in practice).
    unsafe {
        let manager: INetworkListManager = CoCreateInstance(&NetworkListManager, None, CLSCTX_ALL)?;
        let connections = manager.GetNetworkConnections()?;
        loop {
            let mut slot = [None];
            connections.Next(&mut slot, None)?;
            // Fewer than asked (S_FALSE, a success) means the list is done.
            let [Some(connection)] = slot else {
                return Ok(Outcome::NoNetworkYet);
            };
            if connection.GetAdapterId()? != adapter {
                continue;
            }
            let network = connection.GetNetwork()?;
            if network.GetCategory()? != NLM_NETWORK_CATEGORY_PUBLIC {
                return Ok(Outcome::NotPublic);
            }
            network.SetCategory(NLM_NETWORK_CATEGORY_PRIVATE)?;
            return Ok(Outcome::Marked);
        }
    }
}

/// COM initialised (multithreaded) on this thread until dropped; not `Send`, so it is
/// dropped on the thread that created it.
#[derive(Debug)]
pub(crate) struct ComThread {
    uninit: bool,
    _this_thread: PhantomData<*const ()>,
}

impl ComThread {
    pub(crate) fn init() -> windows::core::Result<Self> {
        // SAFETY: initialises COM for this thread; balanced by `Drop` when it succeeded.
        let hr = unsafe { CoInitializeEx(None, COINIT_MULTITHREADED) };
        if hr == RPC_E_CHANGED_MODE {
            // Already single-threaded here; COM works, but it is not ours to undo.
            return Ok(Self {
                uninit: false,
                _this_thread: PhantomData,
            });
        }
        hr.ok()?;
        Ok(Self {
            uninit: true,
            _this_thread: PhantomData,
        })
    }
}

impl Drop for ComThread {
    fn drop(&mut self) {
        if self.uninit {
            // SAFETY: balances the successful CoInitializeEx of `init` on this same
            // thread (the value is not `Send`).
            unsafe { CoUninitialize() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_adapter_has_no_network() {
        let _com = ComThread::init().unwrap();
        let outcome = mark_private(crate::guid::adapter_guid("no such adapter"));
        assert!(matches!(outcome, Ok(Outcome::NoNetworkYet)), "{outcome:?}");
    }

    /// Under Wine 8 netprofm lists one connection per interface, each Public, and
    /// `SetCategory` is not implemented: reaching that error proves the adapter was
    /// matched and its category read. Not run on Windows, where it would change a real
    /// network's category.
    #[test]
    fn a_listed_adapter_is_matched_and_its_public_network_changed() {
        if !under_wine() {
            eprintln!("skipped: only under Wine");
            return;
        }
        let _com = ComThread::init().unwrap();
        // SAFETY: plain COM calls on owned interfaces; COM is initialised.
        let first = unsafe {
            let manager: INetworkListManager =
                CoCreateInstance(&NetworkListManager, None, CLSCTX_ALL).unwrap();
            let mut slot = [None];
            manager
                .GetNetworkConnections()
                .unwrap()
                .Next(&mut slot, None)
                .unwrap();
            let [Some(connection)] = slot else {
                panic!("Wine lists no network connection");
            };
            connection.GetAdapterId().unwrap()
        };
        let err = mark_private(first.to_u128()).unwrap_err();
        assert_eq!(err.code(), windows::Win32::Foundation::E_NOTIMPL, "{err}");
    }

    fn under_wine() -> bool {
        use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
        let ntdll: Vec<u16> = "ntdll.dll".encode_utf16().chain([0]).collect();
        // SAFETY: ntdll is always loaded; the names are NUL-terminated.
        unsafe {
            let module = GetModuleHandleW(ntdll.as_ptr());
            GetProcAddress(module, c"wine_get_version".as_ptr().cast()).is_some()
        }
    }
}
