//! One member's client, connected on first use, and the node-local file that
//! remembers which member answered last.

use std::path::Path;
use std::sync::{Arc, Mutex};

use etcd_client::{Client, ConnectOptions, KvClient, LeaseClient, MaintenanceClient};

/// The gRPC clients of one member. Only these: cloning (and dropping) the
/// whole `Client`, eight gRPC clients, per request showed in the client CPU
/// per reserve.
#[derive(Clone)]
pub(super) struct Clients {
    pub kv: KvClient,
    pub lease: LeaseClient,
    pub maintenance: MaintenanceClient,
}

/// One endpoint.
pub(super) struct Member {
    url: String,
    opts: ConnectOptions,
    /// `None` until first used, and again after its auth token expired.
    clients: Mutex<Option<Arc<Clients>>>,
}

impl Member {
    pub fn new(url: &str, opts: ConnectOptions) -> Self {
        Member {
            url: url.to_owned(),
            opts,
            clients: Mutex::new(None),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The member's clients, connecting first if needed: lazy, except that
    /// with a user set connecting authenticates (one round trip; etcd's
    /// simple tokens are per member, so each member gets its own).
    pub async fn clients(&self) -> Result<Arc<Clients>, etcd_client::Error> {
        if let Some(c) = self.lock().as_ref() {
            return Ok(Arc::clone(c));
        }
        let c = Client::connect([self.url.as_str()], Some(self.opts.clone())).await?;
        let c = Arc::new(Clients {
            kv: c.kv_client(),
            lease: c.lease_client(),
            maintenance: c.maintenance_client(),
        });
        // Another request may have connected meanwhile: keep the first.
        Ok(Arc::clone(self.lock().get_or_insert(c)))
    }

    /// Drops the clients (their auth token expired): the next use connects
    /// and authenticates again.
    pub fn reconnect(&self) {
        self.lock().take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Clients>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The remembered member's index in `endpoints`, if the file names one of
/// them (a missing, torn or stale file is ignored).
pub(super) fn read_remembered(file: &Path, endpoints: &[String]) -> Option<usize> {
    let text = std::fs::read_to_string(file).ok()?;
    let url = text.trim();
    endpoints.iter().position(|e| e.trim() == url)
}

/// Remembers `url` for the node's next execs. Best effort: the file only
/// saves the next exec a failed first attempt. Written to a temporary file
/// and renamed, so a reader sees one whole URL or the previous one; this
/// happens only when the answering member changes, never on the common
/// path.
pub(super) fn remember(file: &Path, url: &str) {
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    // No directory is created: the file lives in the state directory,
    // which the exec's records already need.
    let done = std::fs::write(&tmp, format!("{url}\n")).and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(file = %file.display(), error = %e, "could not remember the etcd member");
    }
}
